"""``kdbench.evaluate``: clean accuracy, then every attack on every clean-correct point (or,
with ``cascade``, on the points still robust), re-checked by kdbench, with Wilson intervals,
W-Robust, per-class figures, pass counts, timing and provenance.

:func:`evaluate` is a short pipeline of named stages over typed records
(docs/architecture.md): :func:`plan` (validate, resolve the points and the attacks) ->
:func:`prepare` (device, model, store key) -> :func:`clean_pass` -> :func:`attack_all` (per
chunk, with the store and ``--resume``) -> :func:`assemble` (statistics, validity checks,
provenance) -> an :class:`~kdbench.evaluation.result.EvalResult`.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .. import distributed as ddist
from ..attacks.registry import Attack, build_attack, within_budget
from ..attacks.suites import suite as suite_specs
from ..data import Dataset, get_dataset
from ..device import resolve_device
from ..errors import KdbenchError
from ..version import __version__
from . import metrics, validity
from .result import (AttackResult, DatasetProvenance, Distillation, EvalResult, Flag, MinPerturbation, ModelProvenance, Passes,
                     PerSample, Provenance, RunConfig, Sensitivity, Validity, WorstCase, WorstClass, from_json, to_json)



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


@dataclass
class Plan:
    """What is evaluated: the points, their provenance and the attack specs (stage 1)."""
    x: torch.Tensor
    y: torch.Tensor
    data: DatasetProvenance
    test_index: Optional[List[int]]
    eps: float
    norm: str
    specs: List[str]
    dataset: Optional[Dataset] = None


@dataclass
class Session:
    """The model on its device, the resolved attacks and the store key (stage 2)."""
    model: nn.Module
    counted: CountingModel
    dev: torch.device
    dinfo: ddist.DistInfo
    num_classes: int
    attacks: List[Attack]
    key: str
    x: torch.Tensor


@dataclass
class AttackOutcome:
    """One attack over every point (stage 4): per-point robustness, distances, cost."""
    attack: Attack
    robust: torch.Tensor
    distances: Optional[torch.Tensor]
    seconds: float
    passes: Passes
    composition: Dict[str, Dict[str, int]] = field(default_factory=dict)


def plan(x, y, dataset, n, attacks, suite, eps, norm, batch_size, chunk_size) -> Plan:
    """Stage 1: validate the arguments and resolve the points (a dataset's seeded test subset,
    or the given tensors) and the attack specs."""
    if batch_size is None or batch_size <= 0:
        raise KdbenchError(f"batch size must be positive, got {batch_size}")
    if chunk_size <= 0:
        raise KdbenchError(f"chunk size must be positive, got {chunk_size}")
    if norm not in ("Linf", "L2"):
        raise KdbenchError(f"norm must be Linf or L2, got {norm!r}")
    ds, test_index, data = None, None, None
    if dataset is not None:
        ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
        idx, h = ds.eval_indices(n, seed=0)
        x, y = ds.test.images(idx), ds.test.y[idx]
        data = DatasetProvenance(ds.info.name, split="test", n=len(idx), subset_seed=0, subset_hash=h)
        test_index = idx.tolist()
        eps = ds.info.eps if eps is None else eps
    elif x is None or y is None:
        raise KdbenchError("give x and y, or a dataset")
    validate_inputs(x, y)
    y = y.to(torch.int64)
    if data is None:
        data = DatasetProvenance("tensors", n=len(y), data_hash=_data_hash(x, y))
    if eps is None or not eps > 0:
        raise KdbenchError(f"eps must be positive, got {eps}")
    specs = list(attacks) if attacks else suite_specs(suite or "quick")
    if len(set(specs)) != len(specs):
        raise KdbenchError(f"attack listed twice in {specs}")
    return Plan(x, y, data, test_index, eps, norm, specs, ds)


def prepare(model: nn.Module, p: Plan, *, device, seed, batch_size, chunk_size, cascade, channels_last,
            provenance) -> Session:
    """Stage 2: the model on its device in eval mode (frozen, counted), a probe of its output
    shape, the attacks built for its class count, and the store key of this evaluation."""
    dinfo = ddist.init_distributed("cuda" if str(device).startswith("cuda") else "cpu")
    dev = resolve_device(device, dinfo.local_rank)
    x = p.x
    model = model.to(dev).eval()
    if channels_last:  # a memory layout only: attacks still run in fp32 (no AMP)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    counted = CountingModel(model).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    with torch.no_grad():
        try:
            probe = model(x[:2].to(dev))
        except Exception as e:
            raise KdbenchError(f"the model fails on inputs of shape {tuple(x.shape[1:])}: "
                               f"{type(e).__name__}: {str(e)[:160]}") from None
    if probe.dim() != 2:
        raise KdbenchError(f"the model must return logits of shape (batch, classes), got {tuple(probe.shape)}")
    num_classes = probe.shape[1]
    y = p.y
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise KdbenchError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model has "
                           f"{num_classes} outputs")
    built = [build_attack(s, p.eps, p.norm, seed, num_classes) for s in p.specs]
    for a in built:
        if a.library_batches:
            a.run.batch_size = batch_size
    # Stored per-chunk outcomes are keyed by model, points and settings; without --cascade an attack's
    # outcome does not depend on the other attacks, so the attack list stays out of the key and a
    # later suite on the same points (standard after quick) reuses every attack already run.
    key_src = {"model": (provenance or {}).get("model"), "data": to_json(p.data), "eps": p.eps, "norm": p.norm,
               "seed": seed, "cascade": cascade, "chunk_size": chunk_size, "batch_size": batch_size,
               **({"attacks": [(a.key, a.params) for a in built]} if cascade else {})}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Session(model, counted, dev, dinfo, num_classes, built, key, x)


def _slot(a: Attack) -> str:
    """An attack's row in the store: its spec and every parameter it ran with."""
    return f"{a.key}#" + hashlib.sha256(json.dumps([a.backend, a.params], sort_keys=True,
                                                   default=str).encode()).hexdigest()[:12]


def clean_pass(s: Session, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Stage 3: which points the model classifies correctly."""
    correct = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb = s.x[i:i + batch_size].to(s.dev)
            correct[i:i + batch_size] = (s.model(xb).argmax(1).cpu() == y[i:i + batch_size])
    return correct


def attack_all(s: Session, y: torch.Tensor, correct: torch.Tensor, *, seed, batch_size, chunk_size, cascade,
               store, resume, progress) -> List[AttackOutcome]:
    """Stage 4: every attack, chunk by chunk (the unit of seeding, resuming and sharding): a chunk
    the store already holds under ``resume`` is read back, any other is attacked and stored."""
    n_total = len(y)
    x, model, dev, dinfo, key = s.x, s.model, s.dev, s.dinfo, s.key
    chunks = [(k, torch.arange(i, min(i + chunk_size, n_total))) for k, i in enumerate(range(0, n_total,
                                                                                             chunk_size))]
    mine = [c for c in chunks if c[0] % dinfo.world == dinfo.rank]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), disable=not (progress and dinfo.main), transient=True)
    still = correct.clone()  # robust under every attack so far (for the cascade)
    done: List[AttackOutcome] = []

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
            prev = next((o for o in done if (o.attack.name, o.attack.backend, o.attack.params) ==
                         (c.name, c.backend, c.params)), None)
            part = store.get_partial(key, _slot(c), k) if (prev is None and store is not None and resume) else None
            if prev is not None or part is not None:
                alive[idx] &= prev.robust[idx] if prev is not None else torch.tensor(part["robust"])
                info["reused_chunks"] += 1
                continue
            sub = idx[alive[idx]]
            broken, _ = _attack_chunk(c, s.counted, model, x, y, sub, dev, batch_size, seed * 1_000_003 + k,
                                      lambda m: None)
            alive[sub[broken]] = False
            info["attacked_points"] += len(sub)
        return ~alive[target]

    with bar:
        for a in s.attacks:
            robust = correct.clone()
            composition: dict = {}  # composed AutoAttack: which components were reused or run
            dists = torch.zeros(n_total)  # clean-misclassified points need no perturbation
            fwd0, bwd0 = s.counted.forward_images, s.counted.backward_images
            stored_f = stored_b = 0
            t0 = time.time()
            stored_seconds = 0.0
            task = bar.add_task(f"{a.key} ({a.backend})", total=sum(len(i) for _, i in mine))
            for k, idx in mine:
                part = store.get_partial(key, _slot(a), k) if (store is not None and resume) else None
                if part is not None:
                    robust[idx] = torch.tensor(part["robust"], dtype=torch.bool)
                    if a.min_norm:
                        dists[idx] = torch.tensor(part["distances"], dtype=torch.float32)
                    stored_f += part["forward"]
                    stored_b += part["backward"]
                    stored_seconds += part["seconds"]
                    bar.advance(task, len(idx))
                    continue
                c_t0, c_f0, c_b0 = time.time(), s.counted.forward_images, s.counted.backward_images
                # minimal-perturbation attacks always run on every clean-correct point (their distances)
                target = idx[(still if cascade and not a.min_norm else correct)[idx]]
                if a.extra.get("components"):
                    broken, dist = compose_chunk(a, k, idx, target, composition), None
                    bar.advance(task, len(target))
                else:
                    broken, dist = _attack_chunk(a, s.counted, model, x, y, target, dev, batch_size,
                                                 seed * 1_000_003 + k, lambda m: bar.advance(task, m))
                robust[idx] = correct[idx]
                robust[target[broken]] = False
                if a.min_norm:
                    dists[target] = dist
                if cascade:
                    robust[idx] &= still[idx]
                bar.advance(task, len(idx) - len(target))
                if store is not None:
                    store.put_partial(key, _slot(a), k, robust[idx].tolist(), s.counted.forward_images - c_f0,
                                      s.counted.backward_images - c_b0, time.time() - c_t0,
                                      dists[idx].tolist() if a.min_norm else None)
            if dinfo.enabled:
                robust = _gather_flags(robust, mine, dinfo, chunk_size)
                if a.min_norm:
                    dists = _gather_flags(dists, mine, dinfo, chunk_size)
            still &= robust
            fwd, bwd = ddist.all_sum([s.counted.forward_images - fwd0 + stored_f,
                                      s.counted.backward_images - bwd0 + stored_b], dinfo, dev)
            done.append(AttackOutcome(a, robust, dists if a.min_norm else None, time.time() - t0 + stored_seconds,
                                      Passes(int(fwd), int(bwd)), composition))
            bar.remove_task(task)
    return done


def _summary(flags: List[bool], labels: List[int], num_classes: int, clean: float) -> dict:
    s = metrics.summary(flags, labels, num_classes, clean)
    s["worst_class"] = WorstClass(**{"cls": s["worst_class"]["class"],
                                     "robust_accuracy": s["worst_class"]["robust_accuracy"]})
    return s


def assemble(p: Plan, s: Session, correct: torch.Tensor, outcomes: List[AttackOutcome], probe_g, budget, *,
             seed, cascade, batch_size, chunk_size, channels_last, provenance, t_start) -> EvalResult:
    """Stage 5: statistics (Wilson intervals, per class, rho_adv), the validity flags and the
    provenance, as an EvalResult."""
    n_total, labels, correct_list = len(p.y), p.y.tolist(), correct.tolist()
    clean = sum(correct_list) / n_total
    attacks: Dict[str, AttackResult] = {}
    per_sample = PerSample(labels, correct_list, {}, index=p.test_index)
    min_pert: Dict[str, MinPerturbation] = {}
    still = correct.clone()
    for o in outcomes:
        a, flags = o.attack, o.robust.tolist()
        still &= o.robust
        summ = _summary(flags, labels, s.num_classes, clean)
        attacks[a.key] = AttackResult(**summ, backend=a.backend, params=a.params, seconds=o.seconds, passes=o.passes,
                                      note="cascade: attacked only points robust to the earlier attacks "
                                           "(cumulative)" if cascade else None,
                                      composition=o.composition or None)
        per_sample.robust[a.key] = flags
        if o.distances is not None:
            min_pert[a.key] = MinPerturbation(**metrics.min_perturbation(o.distances, correct, a.min_norm))
            per_sample.min_distance = per_sample.min_distance or {}
            per_sample.min_distance[a.key] = [float(v) for v in o.distances.tolist()]
    sens = None
    if probe_g is not None:
        sv = probe_g["sensitivity"]
        sens = Sensitivity("softmax probability of the predicted class (seed 000 Eq. 10, T = 1)", sum(sv) / n_total,
                           sum(v < 1e-10 for v in sv) / n_total)
        per_sample.sensitivity, per_sample.confidence = sv, probe_g["confidence"]
    flags = validity.check(n_total, correct_list, {k: v.robust_accuracy for k, v in attacks.items()},
                           per_sample.robust, probe_g) + (budget["flags"] if budget else [])
    ws = _summary(still.tolist(), labels, s.num_classes, clean)
    prov = dict(provenance or {})
    model_prov = prov.pop("model", None)
    return EvalResult(
        clean_accuracy=clean, clean_ci95=list(metrics.wilson(sum(correct_list), n_total)), n=n_total,
        attacks=attacks,
        config=RunConfig(p.eps, p.norm, p.specs, cascade, batch_size, chunk_size, seed, s.num_classes,
                         channels_last, False),
        per_sample=per_sample,
        validity=Validity([Flag(**f) for f in flags],
                          {k: v for k, v in budget.items() if k != "flags"} if budget else None),
        min_perturbation=min_pert or None, sensitivity=sens,
        confidence=sum(probe_g["confidence"]) / n_total if probe_g is not None else None,
        worst_case=WorstCase(ws["robust_accuracy"], ws["ci95"], ws["w_robust"], ws["worst_class"], p.specs),
        provenance=Provenance(
            kdbench_version=__version__, git_commit=_git_commit(), libraries=_versions(), device=str(s.dev),
            dtype=str(p.x.dtype).replace("torch.", ""), seed=seed, dataset=p.data, world_size=s.dinfo.world,
            model=from_json(ModelProvenance, model_prov) if isinstance(model_prov, dict) else model_prov,
            extra=prov, start_time=t_start.isoformat(), end_time=datetime.now(timezone.utc).isoformat(),
            key=s.key))


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
    :mod:`kdbench.evaluation.distill` are added under ``distillation`` (k-NN on ``knn_reference``
    training images when a dataset is given; ``tsne`` a PNG path).  See docs/results.md."""
    t_start = datetime.now(timezone.utc)
    p = plan(x, y, dataset, n, attacks, suite, eps, norm, batch_size, chunk_size)
    s = prepare(model, p, device=device, seed=seed, batch_size=batch_size, chunk_size=chunk_size, cascade=cascade,
                channels_last=channels_last, provenance=provenance)
    if store is not None and not resume and s.dinfo.main:
        store.clear_partial(s.key)
    ddist.barrier(s.dinfo)
    correct = clean_pass(s, p.y, batch_size)
    probe_g = validity.probe_gradients(s.model, s.x, p.y, batch_size, s.dev) if sensitivity else None
    outcomes = attack_all(s, p.y, correct, seed=seed, batch_size=batch_size, chunk_size=chunk_size, cascade=cascade,
                          store=store, resume=resume, progress=progress)
    budget = None
    if checks:
        sub = correct.nonzero().flatten()[:checks_n]
        budget = validity.budget_checks(s.model, s.x[sub], p.y[sub], p.eps, p.norm, seed, s.dev, batch_size) \
            if len(sub) else None
    result = assemble(p, s, correct, outcomes, probe_g, budget, seed=seed, cascade=cascade, batch_size=batch_size,
                      chunk_size=chunk_size, channels_last=channels_last, provenance=provenance, t_start=t_start)
    if teachers:
        from .distill import distillation_metrics

        train_x = train_y = None
        ds = p.dataset
        if ds is not None and knn_reference and ds.train is not None:
            ridx, _ = ds.eval_indices(min(knn_reference, len(ds.train)), seed=0, split="train")
            train_x, train_y = ds.train.images(ridx), ds.train.y[ridx]
        result.distillation = from_json(Distillation, distillation_metrics(
            s.model, list(teachers), s.x, p.y, eps=p.eps, norm=p.norm, dev=s.dev, batch_size=batch_size, seed=seed,
            train_x=train_x, train_y=train_y, teacher_names=list(teacher_names) if teacher_names else None,
            tsne_path=tsne))
    if store is not None and s.dinfo.main:
        result.store_id = store.finish(s.key, result)
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
