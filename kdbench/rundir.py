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
import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

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
    """A run's weights file: ``best.safetensors`` (else ``model.safetensors``); for a committed
    run (a manifest with ``best.sha256``) its file in the nearest ``checkpoints/`` store of an
    enclosing directory (``leaderboards/checkpoints/`` for ``leaderboards/<board>/runs/<run>``),
    or in ``$KDBENCH_CHECKPOINTS``."""
    d = Path(run_dir)
    for name in ((BEST, LAST) if prefer_best else (LAST, BEST)):
        if (d / name).is_file():
            return d / name
    if (d / WEIGHTS_POINTER).is_file():
        sha = (d / WEIGHTS_POINTER).read_text().strip()
        stores = [Path(os.environ["KDBENCH_CHECKPOINTS"])] if os.environ.get("KDBENCH_CHECKPOINTS") else []
        stores += [a / "checkpoints" for a in d.resolve().parents]
        for store in stores:
            if stored_weights(store, sha).is_file():
                return stored_weights(store, sha)
        raise KdbenchError(f"{d}: a committed run whose weights {sha[:12]}... are in no checkpoints/ store of an "
                           "enclosing directory; set KDBENCH_CHECKPOINTS to the store")
    raise KdbenchError(f"{d}: run directory has no weights yet ({BEST} or {LAST})")


def weights_sha256(run_dir) -> str:
    """The sha256 of a run's weights file (a committed run's pointer, without reading the file)."""
    d = Path(run_dir)
    if not (d / BEST).is_file() and not (d / LAST).is_file() and (d / WEIGHTS_POINTER).is_file():
        return (d / WEIGHTS_POINTER).read_text().strip()
    return sha256_file(run_weights(d))


# --- portable references: a run's teachers and init weights by run-relative path and content ----

def model_ref(spec, run_dir) -> Optional[dict]:
    """How a run records a teacher or ``init_from`` that is a path (a run directory or a weights
    file): ``{spec, path, sha256}`` -- the path relative to the run directory and the sha256 of
    the weights -- so the run resolves it from any working directory and after being copied
    (:func:`resolve_ref`).  None for what is not a path (an architecture, code, robustbench:)."""
    if not spec:
        return None
    p = Path(str(spec))
    if is_run_dir(p):
        sha = weights_sha256(p)
    elif p.is_file():
        sha = sha256_file(p)
    else:
        return None
    return {"spec": str(spec), "path": os.path.relpath(p.resolve(), Path(run_dir).resolve()), "sha256": sha}


def _content(p: Path) -> Optional[str]:
    try:
        return weights_sha256(p) if is_run_dir(p) else sha256_file(p) if p.is_file() else None
    except KdbenchError:
        return None


def resolve_ref(run_dir, spec: str, ref: Optional[dict]) -> str:
    """Where a run's recorded teacher / init spec is now.  Tried in order: the spec as written
    (relative to the working directory), the run-relative path of its record, and the spec's last
    components under the run's enclosing directories (a board's layout: ``runs/<teacher>`` next
    to ``runs/<student>``, or above a chain's ``runs/<chain>/assistant``); the first whose
    weights have the recorded sha256 wins (without a record: the first that exists).  A spec that
    is not a path is returned as it is."""
    spec = str(spec)
    if ref is None and (":" in spec or not ("/" in spec or Path(spec).exists())):
        return spec
    run_dir = Path(run_dir)
    parts = Path(spec).parts
    tried = [Path(spec)] + ([run_dir / ref["path"]] if ref else []) + \
        [a / Path(*parts[-k:]) for a in list(run_dir.parents)[:3] for k in range(1, min(len(parts), 3) + 1)]
    for cand in tried:
        if cand.exists() and (ref is None or _content(cand) == ref["sha256"]):
            return str(cand)
    want = f" with sha256 {ref['sha256'][:12]}..." if ref else ""
    raise KdbenchError(f"{run_dir / CONFIG}: its {spec!r}{want} is not at "
                       f"{', '.join(dict.fromkeys(str(t) for t in tried))}: no such file or directory, or other weights")


def run_refs(run_dir, cfg: Optional[dict] = None) -> Tuple[List[str], Optional[str]]:
    """A run's teachers and ``init_from``, resolved (:func:`resolve_ref`) from wherever the run is."""
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    res = cfg.get("resolved") or {}
    refs = res.get("teacher_refs") or []
    teachers = [resolve_ref(run_dir, t, refs[i] if i < len(refs) else None)
                for i, t in enumerate(cfg.get("teachers") or [])]
    init = cfg.get("init_from")
    return teachers, (resolve_ref(run_dir, init, res.get("init_ref")) if init else None)


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
