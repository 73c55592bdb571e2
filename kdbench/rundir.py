"""Run-directory layout (files only: no model is built here; :mod:`kdbench.specs` does that).

A committed run (a board's) is a manifest -- ``config.yaml``, ``metrics.jsonl`` and
``best.sha256`` -- with its weights in one content-addressed store (:func:`save_run`,
:func:`restore_run`).

Run directories: ``config.yaml`` (resolved config), ``model.safetensors`` (last weights),
``best.safetensors`` (best by the selection metric), ``metrics.jsonl`` (history) and
``state.pt`` (the resume point: weights, optimizer, RNG; written atomically each epoch and
loaded with ``weights_only=True``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import yaml

from .errors import KdbenchError
from .weights import atomic_write, sha256_file

CONFIG, LAST, BEST, METRICS, STATE = "config.yaml", "model.safetensors", "best.safetensors", "metrics.jsonl", "state.pt"


def is_run_dir(spec) -> bool:
    return Path(spec).is_dir() and (Path(spec) / CONFIG).is_file()


def link_names(links: int) -> List[str]:
    """The run directories of a teacher-assistant chain of ``links`` links, in order."""
    if links == 1:
        return ["student"]
    if links == 2:
        return ["assistant", "student"]
    return [f"step-{i}" for i in range(1, links)] + ["student"]


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


def run_summary(run_dir, cfg: dict) -> dict:
    """What a leaderboard needs to know about how a model was trained (carried into results):
    ``name`` the run directory's (``root/role`` for a chain link), ``seed`` the run's and ``row``
    the config's ``name`` when it has one (``kdbench train --name``): the run's leaderboard row,
    recorded explicitly.  Runs without one keep the old record, and their row is their name less
    the ``-s<seed>`` of their own seed (``RunInfo.row_name``).  (Results are keyed by this
    record: keep it stable.)"""
    import hashlib

    hist = []
    mp = Path(run_dir) / METRICS
    if mp.is_file():
        hist = [json.loads(line) for line in mp.read_text().splitlines() if line.strip()]
    # the config's hash leaves out what does not change the training: versions, paths, device, the row label
    canon = {k: v for k, v in cfg.items() if k not in ("kdbench_version", "resolved", "data_dir", "device", "name")}
    name, costed = Path(run_dir).resolve().name, list(hist)
    chain = cfg.get("chain") or {}
    if chain.get("root"):  # a teacher-assistant chain: named after its root, costed with the links before it
        root = Path(chain["root"]).name
        name = root if chain.get("role") == "student" else f"{root}/{chain.get('role')}"
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
            "config_sha256": hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest(),
            **({"row": cfg["name"]} if cfg.get("name") else {})}


def write_config(run_dir, data: dict) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(Path(run_dir) / CONFIG, lambda p: Path(p).write_text(text))


def write_metrics(run_dir, history) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(Path(run_dir) / METRICS, lambda p: Path(p).write_text(text))


# --- committed runs: a manifest directory per run, weights in one content-addressed store -------

WEIGHTS_POINTER = "best.sha256"  # a committed run's weights: the sha256 of best.safetensors in the store
_KEPT = (CONFIG, METRICS)


def stored_weights(store, sha256: str) -> Path:
    """A checkpoint's path in a content-addressed store: ``STORE/<sha256>.safetensors``."""
    return Path(store) / f"{sha256}.safetensors"


def _copy_kept(src: Path, dest: Path) -> None:
    """Config and metrics from one run directory (or manifest) to another, each atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in _KEPT:
        if (src / name).is_file() and (src / name).resolve() != (dest / name).resolve():
            atomic_write(dest / name, lambda p, name=name: shutil.copyfile(src / name, p))


def save_run(run_dir, manifest_dir, store, weights=None) -> str:
    """Commit a finished run: its config and metrics into ``manifest_dir``, its best weights (or
    ``weights``) into ``store`` under their sha256 (written once, shared by every board that uses
    them) and that hash into ``manifest_dir/best.sha256``.  Returns the hash."""
    src, dest = Path(run_dir), Path(manifest_dir)
    weights = Path(weights) if weights is not None else run_weights(src)
    sha = sha256_file(weights)
    target = stored_weights(store, sha)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        atomic_write(target, lambda p: shutil.copyfile(weights, p))
    _copy_kept(src, dest)
    atomic_write(dest / WEIGHTS_POINTER, lambda p: Path(p).write_text(sha + "\n"))
    return sha


def restore_run(manifest_dir, store, dest) -> Path:
    """Rebuild a committed run as a run directory in ``dest`` (config, metrics and
    ``best.safetensors`` from the store, its sha256 checked); ``dest`` may be ``manifest_dir``."""
    src, out = Path(manifest_dir), Path(dest)
    pointer = src / WEIGHTS_POINTER
    if not pointer.is_file():
        raise KdbenchError(f"{src}: not a committed run (no {WEIGHTS_POINTER})")
    sha = pointer.read_text().strip()
    weights = stored_weights(store, sha)
    if not weights.is_file():
        raise KdbenchError(f"{src}: its weights {weights} are not in the checkpoint store")
    _copy_kept(src, out)
    atomic_write(out / BEST, lambda p: shutil.copyfile(weights, p))
    if sha256_file(out / BEST) != sha:
        raise KdbenchError(f"{weights}: content does not match its name (sha256 {sha[:12]}...)")
    return out
