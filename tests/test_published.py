"""The published data: `make data` fetches and checks them, the tests find them in the stated
order, and without them the tests that need them skip (or, under CI, fail) saying how to get
them. Downloads come from a local HTTP server standing in for the authors' repository."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import EXPECTED, ROOT, require_isomura_data

from mea_control.fep import published

FETCH = [sys.executable, "-m", "mea_control.fep.published"]


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of a local HTTP server."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/data/"
    httpd.shutdown()
    httpd.server_close()


def fetch(dest, url, **kw):
    env = {**os.environ, published.URL_ENV: url}
    return subprocess.run([*FETCH, str(dest)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT, **kw)


def test_make_data_fetches_checks_and_writes_the_expected_figures(server, isomura_data,
                                                                  tmp_path):
    served, url = server
    (served / "data").mkdir()
    for name in published.FILES:
        shutil.copy(isomura_data / name, served / "data" / name)
    dest = tmp_path / "isomura2023"
    # the Makefile's recipe, with this interpreter in place of .venv's (STAMP= skips the
    # install step the target otherwise depends on)
    python_dir = Path(sys.executable).parent
    done = subprocess.run(["make", "-s", "data", "STAMP=", f"BIN={python_dir}",
                           f"ISOMURA={dest}"], cwd=ROOT,
                          env={**os.environ, published.URL_ENV: url},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted([*published.FILES, "expected.json"])
    for name, digest in published.FILES.items():
        assert published.sha256(dest / name) == digest
    assert (dest / "expected.json").read_text() == EXPECTED.read_text()
    # Run again with the server gone: the files are checked, not fetched again.
    again = fetch(dest, "http://127.0.0.1:9/")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("present, checksum ok") == len(published.FILES)


def test_wrong_bytes_are_not_kept(server, tmp_path):
    served, url = server
    (served / "data").mkdir()
    for name in published.FILES:
        (served / "data" / name).write_bytes(b"MATLAB 5.0 MAT-file, but not the published one")
    dest = tmp_path / "isomura2023"
    done = fetch(dest, url)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download"), done.stderr
    assert "SHA-256" in lines[0] and "by hand" in lines[0]
    assert list(dest.iterdir()) == []  # neither the file nor a partial download is left


def test_a_damaged_file_is_fetched_again(server, isomura_data, tmp_path):
    served, url = server
    (served / "data").mkdir()
    dest = tmp_path / "isomura2023"
    dest.mkdir()
    for name in published.FILES:
        shutil.copy(isomura_data / name, served / "data" / name)
        (dest / name).write_bytes((isomura_data / name).read_bytes()[:-100])  # cut short
    done = fetch(dest, url)
    assert done.returncode == 0, done.stderr
    assert all(published.sha256(dest / n) == d for n, d in published.FILES.items())


def test_no_network_is_one_line_saying_how_to_place_the_files(tmp_path):
    done = fetch(tmp_path / "isomura2023", "http://127.0.0.1:9/")  # nothing listens on 9
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "place response_data_mix0.mat and response_data_mix50.mat by hand" in lines[0]


def test_data_are_looked_for_in_the_stated_order(tmp_path, monkeypatch):
    env_dir, own, shared = (tmp_path / n for n in ("env", "own", "shared"))
    monkeypatch.setattr(published, "FOLDERS", (own, shared))
    monkeypatch.setenv(published.DATA_ENV, str(env_dir))
    assert published.candidates() == [env_dir, own, shared]
    assert published.locate() is None
    for folder in (shared, own, env_dir):  # each found first once it holds the files
        folder.mkdir()
        (folder / "response_data_mix0.mat").write_bytes(b"")
        assert published.locate() != folder  # one file is not the data
        (folder / "response_data_mix50.mat").write_bytes(b"")
        assert published.locate() == folder
    monkeypatch.delenv(published.DATA_ENV)
    assert published.locate() == own


def test_the_checkout_folders_are_data_and_shared():
    assert published.FOLDERS == (ROOT / "data" / "isomura2023",
                                 ROOT.parent / "shared" / "data" / "isomura2023")
    assert "/data/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_data_skip_naming_make_data_but_fail_under_ci(tmp_path, monkeypatch, ci):
    monkeypatch.setattr(published, "FOLDERS", (tmp_path / "none",))
    monkeypatch.delenv(published.DATA_ENV, raising=False)
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome) as caught:
        require_isomura_data()
    assert "make data" in str(caught.value) and str(tmp_path / "none") in str(caught.value)


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    done = fetch(tmp_path / "a_file" / "isomura2023", "http://127.0.0.1:9/")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: cannot make the folder {tmp_path / 'a_file' / 'isomura2023'}: Not a directory"]
