"""Argument types shared by the subcommands' parsers."""
from __future__ import annotations

import argparse

from ..config import number


def budget(text: str) -> float:
    """An --eps value: a number or a fraction such as 8/255 (``config.number``)."""
    try:
        return number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a fraction such as 8/255: {text!r}") from None
