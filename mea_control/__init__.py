"""mea-control: closed-loop acquisition and stimulation for MEA cultures."""

import os
from importlib.metadata import PackageNotFoundError, version

# One BLAS thread: the model's products are small, and on a rig's few cores extra BLAS
# threads spin against the acquisition thread (a 2 x 25600 by 25600 x 32 product took
# 0.25-0.55 s instead of 1 ms on a busy 2-core machine). Set before numpy loads BLAS;
# a user's own OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("mea-control")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
