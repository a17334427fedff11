"""The published BSS data of Isomura et al. 2023 (conditions mix0 and mix50): where a checkout
finds them, and fetching them.

The files are GPL-3.0 in the authors' repositories, so this MIT project does not ship
them. ``make data`` runs ``python -m mea_control.fep.published data/isomura2023``: it
downloads each file, checks its SHA-256 and keeps it only when it matches. A checkout
looks for the data in this order (:func:`locate`): ``$MEA_CONTROL_ISOMURA_DATA``,
``data/isomura2023``, ``../shared/data/isomura2023``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

#: The files and their SHA-256.
FILES = {
    "response_data_mix0.mat": "45a56cd147c76c854c0eec48fd58645c76205edd1e7b06ff2d76640f2d7ac072",
    "response_data_mix50.mat": "8d384c2a6c5aea1ac5c5deaf09820af4791d7e65242f7c2fb18c01da997df542",
}
#: Where the files are published, tried in order: the authors' Python implementation, then
#: their MATLAB repository at the commit that added the data.
SOURCES = (
    "https://github.com/takuyaisomura/reverse-engineering-py/raw/HEAD/example/invitro_bss/data/",
    "https://github.com/takuyaisomura/reverse_engineering/raw/"
    "6f026de7184e7f05e463eab784875b8a4f41b780/invitro/",
)
#: A folder holding the data, tried first by :func:`locate`.
DATA_ENV = "MEA_CONTROL_ISOMURA_DATA"
#: A base URL tried instead of :data:`SOURCES` (a mirror, or a local server in tests).
URL_ENV = "MEA_CONTROL_ISOMURA_URL"
#: The checkout's own folder for the data (git-ignored) and the shared one beside it.
CHECKOUT = Path(__file__).resolve().parents[2]
FOLDERS = (CHECKOUT / "data" / "isomura2023", CHECKOUT.parent / "shared" / "data" / "isomura2023")
HOW_TO_GET = ("run `make data` (downloads them into data/isomura2023), or set "
              f"{DATA_ENV} to a folder holding {' and '.join(FILES)}")


class FetchError(Exception):
    """The data could not be fetched; the message is one line with what to do."""


def candidates() -> list[Path]:
    """The folders :func:`locate` tries, in order."""
    env = os.environ.get(DATA_ENV)
    return ([Path(env)] if env else []) + list(FOLDERS)


def locate() -> Path | None:
    """The first folder of :func:`candidates` that holds every published file, or None."""
    return next((folder for folder in candidates()
                 if all((folder / name).is_file() for name in FILES)), None)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, path: Path, want: str) -> str | None:
    """``url`` into ``path`` if its SHA-256 is ``want`` (through a ``.part`` file, so that
    ``path`` is whole or absent); else what went wrong."""
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 16):
                out.write(chunk)
    except (OSError, ValueError) as exc:  # URLError is an OSError
        part.unlink(missing_ok=True)
        return f"{url}: {getattr(exc, 'reason', exc)}"
    got = sha256(part)
    if got != want:
        part.unlink()
        return f"{url}: SHA-256 {got[:12]}... is not the published {want[:12]}..."
    part.replace(path)
    return None


def fetch(folder: Path) -> None:
    """Download the files missing from ``folder`` (or whose SHA-256 is wrong), each from the
    first source that gives the right bytes; FetchError when a file cannot be had."""
    sources = (os.environ[URL_ENV],) if os.environ.get(URL_ENV) else SOURCES
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot make the folder {folder}: {exc.strerror or exc}") from exc
    for name, want in FILES.items():
        path = folder / name
        if path.is_file() and sha256(path) == want:
            print(f"{path}: present, checksum ok")
            continue
        problems = []
        for base in sources:
            url = base.rstrip("/") + "/" + name
            print(f"{name}: downloading {url}")
            problems.append(_download(url, path, want))
            if problems[-1] is None:
                print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, checksum ok")
                break
        else:
            raise FetchError(f"could not download {name} ({'; '.join(problems)}); place "
                             f"{' and '.join(FILES)} by hand in {folder} (from "
                             "github.com/takuyaisomura/reverse-engineering-py, folder "
                             "example/invitro_bss/data) and run this again to check them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mea_control.fep.published",
        description="Download the published BSS data (Isomura et al. 2023: mix0, mix50) into "
                    "FOLDER and check their SHA-256.")
    parser.add_argument("folder", type=Path, help="where to put them (make data: data/isomura2023)")
    args = parser.parse_args(argv)
    try:
        fetch(args.folder)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
