"""``python -m hardware_sim.intan_rhx [SECONDS]``: serve a fake RHX, print its URL."""

import sys
import time

from hardware_sim.intan_rhx.server import FakeRHX


def main(argv: list[str] | None = None) -> None:
    """Serve a fake RHX (listening again after each client) for SECONDS (default an hour)."""
    args = sys.argv[1:] if argv is None else argv
    with FakeRHX(relisten=True) as fake:
        print(fake.url, flush=True)
        time.sleep(float(args[0]) if args else 3600.0)


if __name__ == "__main__":
    main()
