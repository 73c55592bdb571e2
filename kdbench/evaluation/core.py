"""``kdbench.evaluate``: clean accuracy, then every attack on every clean-correct point (or,
with ``cascade``, on the points still robust), re-checked by kdbench, with Wilson intervals,
W-Robust, per-class figures, pass counts, timing and provenance.

Points are processed in *chunks* (``chunk_size`` points, default 1024): the unit of seeding,
resuming and sharding.  Chunk ``k`` is attacked with the torch RNG seeded from
``(seed, k)`` and handed to pyautoattack whole (it batches internally with ``batch_size``),
so a chunk's outcome does not depend on which process ran it: under ``torchrun`` chunks are
dealt round-robin to ranks and the gathered per-sample results equal a single process's.
AutoAttack standard is run component by component on each chunk, reusing the components the run
or the store already has (``compose_chunk``; docs/evaluate.md).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..version import __version__
from ..data import Dataset, get_dataset, index_hash
from ..device import resolve_device
from ..errors import KdbenchError
from .. import distributed as ddist
from . import metrics
from .attacks import Attack, build_attack, suite as suite_specs, within_budget

SCHEMA_VERSION = 1


class CountingModel(nn.Module):
    """Wraps a model, counting images through forward and backward passes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_images = 0
        self.backward_images = 0

    def forward(self, x):
        out = self.model(x)
        n = x.shape[0]
        self.forward_images += n
        if out.requires_grad:
            def hook(grad, n=n):
                self.backward_images += n
            out.register_hook(hook)
        return out


@dataclass
class EvalResult:
    data: dict

    def to_dict(self) -> dict:
        return self.data

    def __getitem__(self, k):
        return self.data[k]

    @property
    def clean_accuracy(self) -> float:
        return self.data["clean_accuracy"]

    def robust_accuracy(self, attack: Optional[str] = None) -> float:
        if attack is None:
            return self.data["worst_case"]["robust_accuracy"]
        return self.data["attacks"][attack]["robust_accuracy"]

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.data, indent=1))


def _git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchattacks", "adversarial-robustness-toolbox", "pyautoattack", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def validate_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise KdbenchError("x and y must be tensors")
    if x.dim() != 4:
        raise KdbenchError(f"images must be 4-d NCHW, got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise KdbenchError(f"labels must be 1-d with one per image, got {tuple(y.shape)} for {len(x)} images")
    if len(x) == 0:
        raise KdbenchError("no images to evaluate")
    if not torch.isfinite(x).all():
        raise KdbenchError("images contain NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise KdbenchError(f"image values must lie in [0, 1] (normalise inside the model), found "
                           f"[{x.min().item():.4g}, {x.max().item():.4g}]")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise KdbenchError(f"labels must be integers, got {y.dtype}")


def _data_hash(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256(x.detach().cpu().float().numpy().tobytes())
    h.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def evaluate(model: nn.Module, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None, *,
             dataset: Union[None, str, Dataset] = None, n: Optional[int] = None,
             attacks: Optional[Sequence[str]] = None, suite: Optional[str] = None, eps: Optional[float] = None,
             norm: str = "Linf", batch_size: int = 256, device: str = "auto", seed: int = 0, cascade: bool = False,
             chunk_size: int = 1024, store=None, resume: bool = False, progress: bool = False,
             provenance: Optional[dict] = None, checks: bool = True, checks_n: int = 200,
             channels_last: bool = False, sensitivity: bool = True, teachers: Optional[Sequence[nn.Module]] = None,
             teacher_names: Optional[Sequence[str]] = None, knn_reference: Optional[int] = 5000,
             tsne: Optional[str] = None) -> EvalResult:
    """Evaluate ``model`` on ``(x, y)`` (float in [0, 1], NCHW) or on ``dataset``'s test split
    (a seeded subset of ``n`` points).  ``checks=False`` skips the budget validity checks and
    ``sensitivity=False`` the gradient probe (sensitivity, confidence and the gradient-based
    flags); both are on by default.  With ``teachers``, the distillation metrics of
    :mod:`kdbench.evaluate.distill` are added under ``distillation`` (k-NN on ``knn_reference``
    training images when a dataset is given; ``tsne`` a PNG path).  See docs/results.md."""
    t_start = datetime.now(timezone.utc)
    if batch_size is None or batch_size <= 0:
        raise KdbenchError(f"batch size must be positive, got {batch_size}")
    if chunk_size <= 0:
        raise KdbenchError(f"chunk size must be positive, got {chunk_size}")
    if norm not in ("Linf", "L2"):
        raise KdbenchError(f"norm must be Linf or L2, got {norm!r}")
    data_prov: dict = {}
    if dataset is not None:
        ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
        idx, h = ds.eval_indices(n, seed=0)
        x, y = ds.test.images(idx), ds.test.y[idx]
        data_prov = {"name": ds.info.name, "split": "test", "n": len(idx), "subset_seed": 0, "subset_hash": h}
        test_index = idx.tolist()
        eps = ds.info.eps if eps is None else eps
    elif x is None or y is None:
        raise KdbenchError("give x and y, or a dataset")
    else:
        test_index = None
    validate_inputs(x, y)
    y = y.to(torch.int64)
    if not data_prov:
        data_prov = {"name": "tensors", "n": len(y), "data_hash": _data_hash(x, y)}
    if eps is None or not eps > 0:
        raise KdbenchError(f"eps must be positive, got {eps}")
    specs = list(attacks) if attacks else suite_specs(suite or "quick")
    if len(set(specs)) != len(specs):
        raise KdbenchError(f"attack listed twice in {specs}")

    dinfo = ddist.init_distributed("cuda" if str(device).startswith("cuda") else "cpu")
    dev = resolve_device(device, dinfo.local_rank)
    model = model.to(dev).eval()
    if channels_last:  # a memory layout only: attacks still run in fp32 (no AMP)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    counted = CountingModel(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        try:
            probe = model(x[:2].to(dev))
        except Exception as e:
            raise KdbenchError(f"the model fails on inputs of shape {tuple(x.shape[1:])}: "
                               f"{type(e).__name__}: {str(e)[:160]}") from None
    if probe.dim() != 2:
        raise KdbenchError(f"the model must return logits of shape (batch, classes), got {tuple(probe.shape)}")
    num_classes = probe.shape[1]
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise KdbenchError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model has "
                           f"{num_classes} outputs")
    built: List[Attack] = [build_attack(s, eps, norm, seed, num_classes) for s in specs]
    for a in built:
        if a.library_batches:
            a.run.batch_size = batch_size

    # Stored per-chunk outcomes are keyed by model, points and settings; without --cascade an attack's
    # outcome does not depend on the other attacks, so the attack list stays out of the key and a
    # later suite on the same points (standard after quick) reuses every attack already run.
    key_src = {"model": (provenance or {}).get("model"), "data": data_prov, "eps": eps, "norm": norm,
               "seed": seed, "cascade": cascade, "chunk_size": chunk_size, "batch_size": batch_size,
               **({"attacks": [(a.key, a.params) for a in built]} if cascade else {})}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def slot(a):  # an attack's row in the store: its spec and every parameter it ran with
        return f"{a.key}#" + hashlib.sha256(json.dumps([a.backend, a.params], sort_keys=True,
                                                       default=str).encode()).hexdigest()[:12]
    if store is not None and not resume and dinfo.main:
        store.clear_partial(key)
    ddist.barrier(dinfo)

    # clean predictions
    correct = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            xb = x[s:s + batch_size].to(dev)
            correct[s:s + batch_size] = (model(xb).argmax(1).cpu() == y[s:s + batch_size])
    n_total = len(y)
    from . import validity

    probe_g = validity.probe_gradients(model, x, y, batch_size, dev) if sensitivity else None
    chunks = [(k, torch.arange(s, min(s + chunk_size, n_total))) for k, s in enumerate(range(0, n_total,
                                                                                             chunk_size))]
    mine = [c for c in chunks if c[0] % dinfo.world == dinfo.rank]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), disable=not (progress and dinfo.main), transient=True)
    still = correct.clone()  # robust under every attack so far (for the cascade and the worst case)
    per_attack: Dict[str, dict] = {}

    def compose_chunk(a: Attack, k: int, idx, target, composition: dict) -> torch.Tensor:
        """AutoAttack standard on one chunk, composed per point as run_standard_evaluation does:
        each component, in AA's order, on the points the earlier ones left robust.  A component
        that already attacked these points (earlier in this run, or in the store under --resume)
        is not run again: its outcome on a point does not depend on the batch it ran in (only its
        random start does), so AND-ing the outcomes is AutoAttack's result.  Nothing reused: the
        same calls on the same points as pyautoattack's own sequence.  Returns target's broken mask."""
        alive = torch.zeros(n_total, dtype=torch.bool)
        alive[target] = True
        for c in a.extra["components"]:
            info = composition.setdefault(c.key, {"reused_chunks": 0, "attacked_points": 0})
            done = next((pa for pa in per_attack.values() if (pa["name"], pa["backend"], pa["params"]) ==
                         (c.name, c.backend, c.params)), None)
            part = store.get_partial(key, slot(c), k) if (done is None and store is not None and resume) else None
            if done is not None or part is not None:
                alive[idx] &= done["flags"][idx] if done is not None else torch.tensor(part["robust"])
                info["reused_chunks"] += 1
                continue
            sub = idx[alive[idx]]
            broken, _ = _attack_chunk(c, counted, model, x, y, sub, dev, batch_size, seed * 1_000_003 + k,
                                      lambda m: None)
            alive[sub[broken]] = False
            info["attacked_points"] += len(sub)
        return ~alive[target]
    with bar:
        for a in built:
            robust = correct.clone()
            composition: dict = {}  # composed AutoAttack: which components were reused or run
            dists = torch.zeros(n_total)  # clean-misclassified points need no perturbation
            fwd0, bwd0 = counted.forward_images, counted.backward_images
            stored_f = stored_b = 0
            t0 = time.time()
            stored_seconds = 0.0
            task = bar.add_task(f"{a.key} ({a.backend})", total=sum(len(i) for _, i in mine))
            for k, idx in mine:
                part = store.get_partial(key, slot(a), k) if (store is not None and resume) else None
                if part is not None:
                    robust[idx] = torch.tensor(part["robust"], dtype=torch.bool)
                    if a.min_norm:
                        dists[idx] = torch.tensor(part["distances"], dtype=torch.float32)
                    stored_f += part["forward"]
                    stored_b += part["backward"]
                    stored_seconds += part["seconds"]
                    bar.advance(task, len(idx))
                    continue
                c_t0, c_f0, c_b0 = time.time(), counted.forward_images, counted.backward_images
                # minimal-perturbation attacks always run on every clean-correct point (their distances)
                target = idx[(still if cascade and not a.min_norm else correct)[idx]]
                if a.extra.get("components"):
                    broken, dist = compose_chunk(a, k, idx, target, composition), None
                    bar.advance(task, len(target))
                else:
                    broken, dist = _attack_chunk(a, counted, model, x, y, target, dev, batch_size,
                                                 seed * 1_000_003 + k, lambda m: bar.advance(task, m))
                robust[idx] = correct[idx]
                robust[target[broken]] = False
                if a.min_norm:
                    dists[target] = dist
                if cascade:
                    robust[idx] &= still[idx]
                bar.advance(task, len(idx) - len(target))
                if store is not None:
                    store.put_partial(key, slot(a), k, robust[idx].tolist(), counted.forward_images - c_f0,
                                      counted.backward_images - c_b0, time.time() - c_t0,
                                      dists[idx].tolist() if a.min_norm else None)
            if dinfo.enabled:
                robust = _gather_flags(robust, mine, dinfo, chunk_size)
                if a.min_norm:
                    dists = _gather_flags(dists, mine, dinfo, chunk_size)
            still &= robust
            fwd, bwd = ddist.all_sum([counted.forward_images - fwd0 + stored_f,
                                      counted.backward_images - bwd0 + stored_b], dinfo, dev)
            per_attack[a.key] = {"flags": robust, "backend": a.backend, "params": a.params, "name": a.name,
                                 "distances": dists if a.min_norm else None, "min_norm": a.min_norm,
                                 "seconds": time.time() - t0 + stored_seconds,
                                 "passes": {"forward": int(fwd), "backward": int(bwd)},
                                 **({"composition": composition} if composition else {})}
            bar.remove_task(task)
    correct_list = correct.tolist()
    labels = y.tolist()
    clean = sum(correct_list) / n_total
    res = {"schema_version": SCHEMA_VERSION, "clean_accuracy": clean,
           "clean_ci95": list(metrics.wilson(sum(correct_list), n_total)), "n": n_total, "attacks": {},
           "config": {"eps": eps, "norm": norm, "attacks": specs, "cascade": cascade, "batch_size": batch_size,
                      "chunk_size": chunk_size, "seed": seed, "num_classes": num_classes,
                      "channels_last": channels_last, "amp": False},
           "per_sample": {"labels": labels, "correct_clean": correct_list, "robust": {},
                          **({"index": test_index} if test_index is not None else {})},
           "validity": {"flags": []}}
    for name, pa in per_attack.items():
        flags = pa["flags"].tolist()
        s = metrics.summary(flags, labels, num_classes, clean)
        if cascade:
            s["note"] = "cascade: attacked only points robust to the earlier attacks (cumulative)"
        res["attacks"][name] = {**s, "backend": pa["backend"], "params": pa["params"], "seconds": pa["seconds"],
                                "passes": pa["passes"],
                                **({"composition": pa["composition"]} if "composition" in pa else {})}
        res["per_sample"]["robust"][name] = flags
        if pa["distances"] is not None:
            d = pa["distances"]
            res.setdefault("min_perturbation", {})[name] = metrics.min_perturbation(d, correct, pa["min_norm"])
            res["per_sample"].setdefault("min_distance", {})[name] = [float(v) for v in d.tolist()]
    if probe_g is not None:
        sens = probe_g["sensitivity"]
        res["sensitivity"] = {"of": "softmax probability of the predicted class (seed 000 Eq. 10, T = 1)",
                              "mean": sum(sens) / n_total,
                              "fraction_below_1e-10": sum(v < 1e-10 for v in sens) / n_total}
        res["confidence"] = sum(probe_g["confidence"]) / n_total
        res["per_sample"]["sensitivity"] = sens
        res["per_sample"]["confidence"] = probe_g["confidence"]
    budget = None
    if checks:
        sub = correct.nonzero().flatten()[:checks_n]
        budget = validity.budget_checks(model, x[sub], y[sub], eps, norm, seed, dev, batch_size) if len(sub) else None
    res["validity"] = {"flags": validity.check(res, probe_g) + (budget["flags"] if budget else []),
                       "budget_checks": {k: v for k, v in budget.items() if k != "flags"} if budget else None}
    worst = still.tolist()
    ws = metrics.summary(worst, labels, num_classes, clean)
    res["worst_case"] = {"robust_accuracy": ws["robust_accuracy"], "ci95": ws["ci95"], "w_robust": ws["w_robust"],
                         "worst_class": ws["worst_class"], "attacks": specs}
    res["provenance"] = {"kdbench_version": __version__, "git_commit": _git_commit(), "libraries": _versions(),
                         "device": str(dev), "dtype": str(x.dtype).replace("torch.", ""), "seed": seed,
                         "dataset": data_prov, "world_size": dinfo.world, **(provenance or {}),
                         "start_time": t_start.isoformat(), "end_time": datetime.now(timezone.utc).isoformat(),
                         "key": key}
    if teachers:
        from .distill import distillation_metrics

        train_x = train_y = None
        if dataset is not None and knn_reference and ds.train is not None:
            ridx, _ = ds.eval_indices(min(knn_reference, len(ds.train)), seed=0, split="train")
            train_x, train_y = ds.train.images(ridx), ds.train.y[ridx]
        res["distillation"] = distillation_metrics(
            model, list(teachers), x, y, eps=eps, norm=norm, dev=dev, batch_size=batch_size, seed=seed,
            train_x=train_x, train_y=train_y, teacher_names=list(teacher_names) if teacher_names else None,
            tsne_path=tsne)
    result = EvalResult(res)
    if store is not None and dinfo.main:
        res["store_id"] = store.finish(key, res)
    return result


def _attack_chunk(a: Attack, counted, model, x, y, target, dev, batch_size, rng_seed, advance):
    """Run one attack on the points ``target`` of a chunk; return which of them it broke
    (after kdbench's own re-check: misclassified, inside [0, 1] and inside the budget) and,
    for minimal-perturbation attacks, the distance found (inf where it failed)."""
    from ..attacks.cw import distance

    broken = torch.zeros(len(target), dtype=torch.bool)
    dist = torch.full((len(target),), float("inf"))
    if len(target) == 0:
        return broken, dist
    torch.manual_seed(rng_seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(rng_seed)
    step = len(target) if a.library_batches else batch_size
    for s in range(0, len(target), step):
        sel = target[s:s + step]
        xb, yb = x[sel].to(dev), y[sel].to(dev)
        try:
            xa = a.run(counted, xb, yb)
        except KdbenchError:
            raise
        except Exception as e:
            raise KdbenchError(f"attack {a.key} ({a.backend}) failed: {type(e).__name__}: {str(e)[:200]}") from None
        xa = xa.detach().to(dev, xb.dtype)
        with torch.no_grad():
            pred = model(xa).argmax(1)
        fooled = (pred != yb) & (xa.flatten(1).min(1).values >= 0) & (xa.flatten(1).max(1).values <= 1)
        broken[s:s + step] = (fooled & within_budget(xa - xb, a.norm, a.eps)).cpu()
        if a.min_norm:
            d = distance(xa - xb, a.min_norm).cpu()
            dist[s:s + step] = torch.where(fooled.cpu(), d, torch.full_like(d, float("inf")))
        advance(len(sel))
    return broken, dist


def _gather_flags(robust: torch.Tensor, mine, dinfo, chunk_size: int) -> torch.Tensor:
    """Every rank's chunk outcomes, assembled in point order on every rank."""
    parts = ddist.gather_objects({k: robust[idx].tolist() for k, idx in mine}, dinfo)
    out = robust.clone()
    for d in parts:
        for k, flags in d.items():
            out[k * chunk_size:k * chunk_size + len(flags)] = torch.tensor(flags, dtype=out.dtype)
    return out
