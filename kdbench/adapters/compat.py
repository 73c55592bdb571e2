"""Compatibility shims that let robustbench 1.1.1 import against a CPU-only torch.

* torchvision 0.28.0 on PyPI is a CUDA build: ``import torchvision`` fails on CPU torch with
  ``operator torchvision::nms does not exist`` because its meta registrations expect the
  compiled ops.  Defining the two op *schemas* (``nms``, ``qnms``) first makes the Python
  parts import (transforms, datasets, models); the compiled ops stay unavailable.
* robustbench imports the module ``autoattack`` while its dependency pyautoattack installs
  ``pyautoattack``: alias it.

Only the RobustBench adapter calls this; kdbench's core never imports torchvision.
"""
from __future__ import annotations

import sys

_LIB = None


def ensure_torchvision_importable() -> None:
    global _LIB
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401  (works as is on a matching CUDA build)
        return
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    import torch

    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811


def ensure_autoattack_alias() -> None:
    if "autoattack" not in sys.modules:
        import pyautoattack

        sys.modules["autoattack"] = pyautoattack


def prepare_robustbench() -> None:
    ensure_torchvision_importable()
    ensure_autoattack_alias()
