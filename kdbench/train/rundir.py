"""Run directories: ``config.yaml`` (resolved config), ``model.safetensors`` (last weights),
``best.safetensors`` (best by the selection metric), ``metrics.jsonl`` (history) and
``state.pt`` (the resume point: weights, optimizer, RNG; written atomically each epoch and
loaded with ``weights_only=True``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from ..errors import KdbenchError
from ..weights import atomic_write

CONFIG, LAST, BEST, METRICS, STATE = "config.yaml", "model.safetensors", "best.safetensors", "metrics.jsonl", "state.pt"


def read_run_config(run_dir) -> dict:
    p = Path(run_dir) / CONFIG
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KdbenchError(f"{p}: unreadable run config ({type(e).__name__})") from None
    if not isinstance(data, dict) or "dataset_info" not in data or "model" not in data:
        raise KdbenchError(f"{p}: not a kdbench run config")
    return data


def run_weights(run_dir, prefer_best: bool = True) -> Path:
    d = Path(run_dir)
    for name in ((BEST, LAST) if prefer_best else (LAST, BEST)):
        if (d / name).is_file():
            return d / name
    raise KdbenchError(f"{d}: run directory has no weights yet ({BEST} or {LAST})")


def load_run_model(run_dir, weights: Optional[str] = None):
    """Rebuild a run's model from its config and load its best (else last) weights."""
    from ..models import LoadedModel, build_model, unwrap
    from ..weights import load_weights

    cfg = read_run_config(run_dir)
    info = cfg["dataset_info"]
    model = build_model(cfg["model"], info["num_classes"], info["in_channels"], info["input_size"],
                        **(cfg.get("model_kwargs") or {}))
    if cfg.get("method"):
        from ..methods import get_method

        model = get_method(cfg["method"]).build_student(model, cfg.get("method_params") or {},
                                                        len(cfg.get("teachers") or []), info["num_classes"])
    path = Path(weights) if weights else run_weights(run_dir)
    sha = load_weights(unwrap(model), path)
    lm = LoadedModel(model, str(run_dir), arch=cfg["model"], weights=str(path), weights_sha256=sha, info=info)
    lm.run_config = cfg
    lm.run = run_summary(run_dir, cfg)
    return lm


def run_summary(run_dir, cfg: dict) -> dict:
    """What a leaderboard needs to know about how a model was trained (carried into results)."""
    import hashlib

    hist = []
    mp = Path(run_dir) / METRICS
    if mp.is_file():
        hist = [json.loads(line) for line in mp.read_text().splitlines() if line.strip()]
    canon = {k: v for k, v in cfg.items() if k not in ("kdbench_version", "resolved", "data_dir", "device")}
    name, costed = Path(run_dir).resolve().name, list(hist)
    chain = cfg.get("chain") or {}
    if chain.get("root"):  # a teacher-assistant chain: named after its root, costed with the links before it
        root = Path(chain["root"]).name
        name = root if chain.get("role") == "student" else f"{root}/{chain.get('role')}"
        from .chain import link_names

        for prev in link_names(int(chain.get("links", 1)))[:int(chain.get("index", 1)) - 1]:
            link = Path(run_dir).resolve().parent / prev / METRICS
            if link.is_file():
                costed += [json.loads(line) for line in link.read_text().splitlines() if line.strip()]
    return {"name": name, "method": cfg.get("method"), "model": cfg.get("model"),
            "model_kwargs": cfg.get("model_kwargs") or {}, "teachers": cfg.get("teachers") or [],
            "method_params": cfg.get("method_params") or {}, "seed": cfg.get("seed"), "epochs": cfg.get("epochs"),
            "train_subset": cfg.get("train_subset"), "train_size": (cfg.get("resolved") or {}).get("train_size"),
            "device": (cfg.get("resolved") or {}).get("device"), "epochs_done": len(hist),
            "train_seconds": sum(h.get("seconds", 0.0) for h in costed),
            "student_forward_images": sum(h.get("student_forward_images", 0) for h in costed),
            "teacher_forward_images": sum(h.get("teacher_forward_images", 0) for h in costed),
            "config_sha256": hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()}


def write_config(run_dir, data: dict) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG, lambda p: Path(p).write_text(text))


def write_metrics(run_dir, history) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(Path(run_dir) / METRICS, lambda p: Path(p).write_text(text))
