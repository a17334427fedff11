"""mea-control: closed-loop acquisition and stimulation for MEA cultures."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mea-control")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
