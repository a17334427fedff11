"""Option value types shared by the commands' parsers: each a one-line error when wrong."""

from __future__ import annotations

import argparse
import math
from typing import Any


def positive(upper: float = math.inf) -> Any:
    """A finite number above 0 and at most ``upper``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= upper):
            limit = "" if upper == math.inf else f" and at most {upper:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0{limit}")
        return value

    return parse


def count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def positive_int(text: str) -> int:
    """A whole number, 1 or more."""
    value = count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value
