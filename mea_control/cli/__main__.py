"""`python -m mea_control.cli`: the same as the `mea-control` command."""

import sys

from mea_control.cli import main

sys.exit(main())
