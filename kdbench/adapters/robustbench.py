"""RobustBench models by name: ``robustbench:NAME`` or ``robustbench:DATASET/THREAT/NAME``.

Checkpoints are read from a local model directory laid out as RobustBench does
(``MODEL_DIR/<dataset>/<threat>/<NAME>.pt``); MODEL_DIR is ``$KDBENCH_ROBUSTBENCH_DIR`` or
RobustBench's default ``./models``.  A missing file is a clear error naming the path (no
download attempt offline); the file is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

from ..errors import KdbenchError

CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def model_dir() -> Path:
    return Path(os.environ.get("KDBENCH_ROBUSTBENCH_DIR", "./models"))


def load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf"):
    """Returns (module in eval mode, full spec, checkpoint path, its sha256, class count)."""
    from ..weights import sha256_file

    parts = name.split("/")
    if len(parts) == 3:
        dataset, threat_model, name = parts
    elif len(parts) != 1:
        raise KdbenchError(f"robustbench spec must be NAME or DATASET/THREAT/NAME, got {name!r}")
    if dataset not in CLASSES:
        raise KdbenchError(f"robustbench dataset must be one of {sorted(CLASSES)}, got {dataset!r}")
    from .compat import prepare_robustbench

    prepare_robustbench()
    import robustbench.utils as rbu
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError):
        raise KdbenchError(f"robustbench has no threat model {threat_model!r} for {dataset}") from None
    if name not in zoo:
        raise KdbenchError(f"unknown RobustBench model {name!r} for {dataset}/{threat_model}")
    path = model_dir() / dataset / threat_model / f"{name}.pt"
    if not path.is_file() and not isinstance(zoo[name].get("gdrive_id"), list):
        raise KdbenchError(f"RobustBench checkpoint: no such file or directory: {path} (set KDBENCH_ROBUSTBENCH_DIR or place "
                           f"the file there; offline machines cannot download it)")
    import torch

    safe_load = functools.partial(torch.load, weights_only=True)
    original = rbu.torch.load
    rbu.torch.load = safe_load  # robustbench calls torch.load without weights_only
    try:
        model = rbu.load_model(name, model_dir=str(model_dir()), dataset=dataset, threat_model=threat_model)
    except pickle.UnpicklingError as e:
        raise KdbenchError(f"refusing to load {path}: not loadable with weights_only=True ({str(e)[:100]})") \
            from None
    except Exception as e:
        raise KdbenchError(f"robustbench could not load {name}: {type(e).__name__}: {str(e)[:160]}") from None
    finally:
        rbu.torch.load = original
    return (model.eval(), f"robustbench:{dataset}/{threat_model}/{name}", str(path),
            sha256_file(path) if path.is_file() else None, CLASSES[dataset])
