"""Argument types shared by the subcommands' parsers."""
from __future__ import annotations

import argparse


def budget(text: str) -> float:
    """An --eps value: a number or a fraction such as 8/255."""
    t = str(text).strip()
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or a fraction such as 8/255: {text!r}") from None
