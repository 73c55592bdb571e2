"""``KDBENCH_SMOKE=1``: every command at a size that only shows it runs (the docs test runs each
documented command this way; docs/guide.md).  Caps, never raises: evaluation points, k-NN
reference images, training epochs, training images and monitor points.  A capped run says so on
stderr and records the caps (``provenance.smoke`` in results, ``resolved.smoke`` in a run's
config), so a smoke figure is never mistaken for a result."""
from __future__ import annotations

import os
import sys
from typing import Optional

CAPS = {"n": 8, "knn_reference": 64, "epochs": 1, "train_subset": 16, "monitor_n": 8}


def active() -> bool:
    return os.environ.get("KDBENCH_SMOKE", "").strip() not in ("", "0", "false", "no")


def cap(name: str, value: Optional[int]) -> Optional[int]:
    """``value`` capped at the smoke size of ``name`` (None: the cap itself) when active."""
    if not active():
        return value
    return CAPS[name] if value is None else min(int(value), CAPS[name])


def announce(what: str) -> Optional[dict]:
    """Say on stderr that ``what`` runs capped; the caps to record, or None when not active."""
    if not active():
        return None
    print(f"KDBENCH_SMOKE: {what} capped at {CAPS} (a smoke run, not a result)", file=sys.stderr)
    return dict(CAPS)
