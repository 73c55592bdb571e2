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
import math
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
from ..models import CountingModel
from ..progress import Reporter
from ..version import __version__
from . import metrics, validity
from .guard import GuardedModel, behaviour_flags, content_hash, model_name, model_state, restore_model
from .result import (AttackResult, Cost, DatasetProvenance, Distillation, EvalResult, Flag, MinPerturbation, ModelProvenance, Passes,
                     PerSample, Provenance, RunConfig, Sensitivity, Validity, WorstCase, WorstClass, from_json, to_json)



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
    for pkg in ("torch", "torchattacks", "adversarial-robustness-toolbox", "pyautoattack", "foolbox", "adv-lib", "numpy"):
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
    model: GuardedModel  # the caller's model, guarded (every stage calls it through the guard)
    counted: CountingModel
    dev: torch.device
    dinfo: ddist.DistInfo
    num_classes: int
    attacks: List[Attack]
    key: str
    x: torch.Tensor
    identity: str = ""  # the key less the model's and the data's content: --resume refuses a change of either
    model_sha256: str = ""
    data_sha256: str = ""
    flags: List[dict] = field(default_factory=list)  # found while preparing (randomised, batch-dependent)


@dataclass
class AttackOutcome:
    """One attack over every point (stage 4): per-point robustness, distances, cost."""
    attack: Attack
    robust: torch.Tensor
    distances: Optional[torch.Tensor]
    seconds: float
    passes: Passes
    composition: Dict[str, Dict[str, int]] = field(default_factory=dict)
    not_evaluated: Optional[torch.Tensor] = None  # points the attack could not process (never robust)
    outside_budget: int = 0  # misclassified outputs outside the budget or [0, 1]: no credit, flagged
    best_of: Optional[Dict[str, int]] = None  # an ensemble: per member, the points where it found the minimum
    stages: Optional[dict] = None  # a cascade's record (an attack's extra["report"]), from the chunks it ran


def with_members(built: List[Attack]) -> List[Attack]:
    """The attacks to run: an ensemble's members (``min-l2``'s ddn, fmn-l2, ...) run as attacks of
    their own, before it and once each, so each keeps its distances and cost in the result."""
    out: List[Attack] = []
    for a in built:
        for m in a.extra.get("members", []) + [a]:
            if all((o.key, o.params) != (m.key, m.params) for o in out):
                out.append(m)
    return out


def plan(x, y, dataset, n, attacks, suite, eps, norm, batch_size, chunk_size, force: bool = False) -> Plan:
    """Stage 1: validate the arguments and resolve the points (a dataset's seeded test subset,
    or the given tensors) and the attack specs.  A budget that can reach any image (L-inf eps
    above 1, L2 eps above the diameter of [0, 1]^d) is refused unless ``force``."""
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
        data = DatasetProvenance(ds.info.name, split="test", n=len(idx), subset_seed=0, subset_hash=h,
                                 data_hash=_data_hash(x, y))
        test_index = idx.tolist()
        eps = ds.info.default_eps(norm) if eps is None else eps
    elif x is None or y is None:
        raise KdbenchError("give x and y, or a dataset")
    validate_inputs(x, y)
    y = y.to(torch.int64)
    if data is None:
        data = DatasetProvenance("tensors", n=len(y), data_hash=_data_hash(x, y))
    if eps is None or not math.isfinite(eps) or not eps > 0:
        raise KdbenchError(f"eps must be a finite positive number, got {eps}")
    diameter = 1.0 if norm == "Linf" else math.sqrt(x[0].numel())
    if eps > diameter and not force:
        raise KdbenchError(f"eps {eps:g} exceeds the {norm} diameter of the input space ({diameter:.4g}): every "
                           "image can reach every other; pass --force (force=True) to evaluate it anyway")
    specs = list(attacks) if attacks else suite_specs(suite or "quick")
    if len(set(specs)) != len(specs):
        raise KdbenchError(f"attack listed twice in {specs}")
    return Plan(x, y, data, test_index, eps, norm, specs, ds)


def prepare(model: nn.Module, p: Plan, *, device, seed, batch_size, chunk_size, cascade, channels_last,
            provenance) -> Session:
    """Stage 2: the model on its device in eval mode (frozen, guarded, counted), a probe of its
    output (shape, dtype, finiteness, randomness, batch dependence), the attacks built for its
    class count, and the store key of this evaluation: model content, data content, settings."""
    dinfo = ddist.init_distributed("cuda" if str(device).startswith("cuda") else "cpu")
    dev = resolve_device(device, dinfo.local_rank)
    x = p.x.contiguous()  # the standard layout, whatever the caller's: attack libraries .view it
    model_sha = content_hash(model)
    model = model.to(dev).eval()
    if channels_last:  # a memory layout only: attacks still run in fp32 (no AMP); the inputs the
        # attacks see keep the standard layout (GuardedModel converts them)
        model = model.to(memory_format=torch.channels_last)
    for prm in model.parameters():
        prm.requires_grad_(False)
    guard = GuardedModel(model, model_name(model, provenance), channels_last=channels_last).eval()
    counted = CountingModel(guard).eval()
    guard.stage = f"a probe on inputs of shape {tuple(x.shape[1:])}"
    with torch.no_grad():
        probe = guard(x[:2].to(dev))
    num_classes = probe.shape[1]
    flags = behaviour_flags(guard, x, dev)
    y = p.y
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise KdbenchError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model has "
                           f"{num_classes} outputs")
    built = with_members([build_attack(s, p.eps, p.norm, seed, num_classes) for s in p.specs])
    for a in built:
        if a.library_batches:
            a.run.batch_size = batch_size
    # Stored per-chunk outcomes are keyed by model, points and settings; without --cascade an attack's
    # outcome does not depend on the other attacks, so the attack list stays out of the key and a
    # later suite on the same points (standard after quick) reuses every attack already run.
    # The model and the points enter by content (parameters and buffers evaluated; image and
    # label bytes), so a store never serves one model's outcomes for another's.
    data_sha = p.data.data_hash
    mp = (provenance or {}).get("model") or {}
    id_src = {"model": {"spec": mp.get("spec"), "weights": mp.get("weights")} if mp else
              {"class": type(model).__qualname__},
              "data": {k: v for k, v in to_json(p.data).items() if k != "data_hash"}, "eps": p.eps, "norm": p.norm,
              "seed": seed, "cascade": cascade, "chunk_size": chunk_size, "batch_size": batch_size,
              **({"attacks": [(a.key, a.params) for a in built]} if cascade else {})}
    identity = _sha(id_src)
    key = _sha({**id_src, "model": mp or None, "model_sha256": model_sha, "data_sha256": data_sha})
    return Session(guard, counted, dev, dinfo, num_classes, built, key, x, identity=identity,
                   model_sha256=model_sha, data_sha256=data_sha, flags=flags)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _slot(a: Attack) -> str:
    """An attack's row in the store: its spec and every parameter it ran with."""
    return f"{a.key}#" + hashlib.sha256(json.dumps([a.backend, a.params], sort_keys=True,
                                                   default=str).encode()).hexdigest()[:12]


def clean_pass(s: Session, y: torch.Tensor, batch_size: int, sensitivity: bool = False, phase=None):
    """Stage 3: which points the model classifies correctly, and which have a finite
    cross-entropy input gradient (a point whose gradient is NaN or infinite cannot be attacked
    by a gradient attack: it is *not evaluated*, never robust).  With ``sensitivity`` the same
    forward pass and CE gradient also give the gradient probe (``validity.probe_batch``: one more
    backward per point).  Returns (correct, finite, probe or None)."""
    import torch.nn.functional as F

    correct = torch.zeros(len(y), dtype=torch.bool)
    finite = torch.ones(len(y), dtype=torch.bool)
    probe = validity.new_probe() if sensitivity else None
    s.model.stage = "the clean pass" + (" and the gradient probe" if sensitivity else "")
    for i in range(0, len(y), batch_size):
        xb = s.x[i:i + batch_size].to(s.dev).requires_grad_(True)
        yb = y[i:i + batch_size].to(s.dev)
        with torch.enable_grad():
            z = s.model(xb)
            g = None
            try:
                if z.requires_grad and probe is not None:
                    g = validity.probe_batch(probe, z, xb, yb)
                elif z.requires_grad:
                    g, = torch.autograd.grad(F.cross_entropy(z, yb, reduction="sum"), xb, allow_unused=True)
                elif probe is not None:  # not differentiable: zero gradients, flagged by the checks
                    _no_gradient_probe(probe, z.detach(), yb)
            except RuntimeError as e:
                raise KdbenchError(f"model {s.model.name}: its backward pass failed ({str(e)[:160]})") from None
            if g is not None:
                finite[i:i + batch_size] = torch.isfinite(g.flatten(1)).all(1).cpu()
        correct[i:i + batch_size] = (z.detach().argmax(1) == yb).cpu()
        if phase is not None:
            phase.advance(len(yb))
    return correct, finite, probe


def _no_gradient_probe(probe: dict, z: torch.Tensor, yb: torch.Tensor) -> None:
    """The probe of a model whose output carries no gradient: every gradient is zero."""
    top, pred = torch.softmax(z, 1).max(1)
    probe["sensitivity"] += [0.0] * len(z)
    probe["ce_grad_max"] += [0.0] * len(z)
    probe["confidence"] += torch.where(pred == yb, top, torch.zeros_like(top)).tolist()


def attack_all(s: Session, y: torch.Tensor, correct: torch.Tensor, *, seed, batch_size, chunk_size, cascade,
               store, resume, reporter, attackable: Optional[torch.Tensor] = None) -> List[AttackOutcome]:
    """Stage 4: every attack, chunk by chunk (the unit of seeding, resuming and sharding): a chunk
    the store already holds under ``resume`` is read back, any other is attacked and stored.
    Only ``attackable`` clean-correct points are attacked; the others, and every point an attack
    could not process, are *not evaluated*: counted as not robust and reported."""
    n_total = len(y)
    x, model, dev, dinfo, key = s.x, s.model, s.dev, s.dinfo, s.key
    attackable = torch.ones(n_total, dtype=torch.bool) if attackable is None else attackable
    chunks = [(k, torch.arange(i, min(i + chunk_size, n_total))) for k, i in enumerate(range(0, n_total,
                                                                                             chunk_size))]
    mine = [c for c in chunks if c[0] % dinfo.world == dinfo.rank]

    still = correct.clone()  # robust under every attack so far (for the cascade)
    done: List[AttackOutcome] = []

    def stored(slot: str, k: int, idx):
        """A chunk's stored outcome, checked against this run (length, robust => clean-correct)."""
        part = store.get_partial(key, slot, k) if (store is not None and resume) else None
        if part is None:
            return None
        if len(part["robust"]) != len(idx) or any(r and not c for r, c in zip(part["robust"], correct[idx].tolist())):
            raise KdbenchError(f"results store {store.path}: stored chunk {k} of {slot.split('#')[0]} does not fit "
                               "this evaluation (corrupted store); run without --resume")
        return part

    def compose_chunk(a: Attack, k: int, idx, target, composition: dict):
        """AutoAttack standard on one chunk, composed per point as run_standard_evaluation does:
        each component, in AA's order, on the points the earlier ones left robust.  A component
        that already attacked these points (earlier in this run, or in the store under --resume)
        is not run again: its outcome on a point does not depend on the batch it ran in (only its
        random start does), so AND-ing the outcomes is AutoAttack's result.  Nothing reused: the
        same calls on the same points as pyautoattack's own sequence.  Returns target's broken
        and not-evaluated masks."""
        alive = torch.zeros(n_total, dtype=torch.bool)
        alive[target] = True
        nev = torch.zeros(n_total, dtype=torch.bool)
        for c in a.extra["components"]:
            info = composition.setdefault(c.key, {"reused_chunks": 0, "attacked_points": 0})
            prev = next((o for o in done if (o.attack.name, o.attack.backend, o.attack.params) ==
                         (c.name, c.backend, c.params)), None)
            part = stored(_slot(c), k, idx) if prev is None else None
            if prev is not None or part is not None:
                r = prev.robust[idx] if prev is not None else torch.tensor(part["robust"])
                bad = prev.not_evaluated[idx] if prev is not None else torch.tensor(part["not_evaluated"])
                nev[idx] |= alive[idx] & bad
                alive[idx] &= r
                info["reused_chunks"] += 1
                continue
            sub = idx[alive[idx]]
            broken, _, invalid, out = _attack_chunk(c, s.counted, model, x, y, sub, dev, batch_size,
                                                    seed * 1_000_003 + k, lambda m: None)
            counts[0] += out
            alive[sub[broken | invalid]] = False
            nev[sub[invalid]] = True
            info["attacked_points"] += len(sub)
        return ~alive[target] & ~nev[target], nev[target]

    for a in s.attacks:
        s.model.stage = f"attack {a.key}"
        if a.extra.get("members"):
            done.append(ensemble_outcome(a, done, correct & attackable))
            continue
        robust = correct.clone()
        nev = correct & ~attackable
        composition: dict = {}  # composed AutoAttack: which components were reused or run
        dists = torch.zeros(n_total, dtype=torch.float64)  # clean-misclassified points need no perturbation
        fwd0, bwd0 = s.counted.forward_images, s.counted.backward_images
        stored_f = stored_b = 0
        t0 = time.time()
        stored_seconds = 0.0
        counts = [0]  # misclassified outputs outside the budget or [0, 1] (given no credit)
        task = reporter.phase(f"{a.key} ({a.backend})", total=sum(len(i) for _, i in mine))
        s.counted.on_forward = lambda: task.note(f"{s.counted.forward_images - fwd0:,} passes")
        for k, idx in mine:
            part = stored(_slot(a), k, idx)
            if part is not None:
                robust[idx] = torch.tensor(part["robust"], dtype=torch.bool)
                nev[idx] = torch.tensor(part["not_evaluated"], dtype=torch.bool)
                if a.min_norm:
                    dists[idx] = torch.tensor(part["distances"], dtype=torch.float64)
                stored_f += part["forward"]
                stored_b += part["backward"]
                stored_seconds += part["seconds"]
                task.advance(len(idx))
                continue
            c_t0, c_f0, c_b0 = time.time(), s.counted.forward_images, s.counted.backward_images
            # minimal-perturbation attacks always run on every clean-correct point (their distances)
            target = idx[((still if cascade and not a.min_norm else correct) & attackable)[idx]]
            if a.extra.get("components"):
                broken, invalid = compose_chunk(a, k, idx, target, composition)
                dist = None
                task.advance(len(target))
            else:
                broken, dist, invalid, out = _attack_chunk(a, s.counted, model, x, y, target, dev, batch_size,
                                                           seed * 1_000_003 + k, lambda m: task.advance(m))
                counts[0] += out
            robust[idx] = correct[idx] & attackable[idx]
            robust[target[broken | invalid]] = False
            nev[target[invalid]] = True
            if a.min_norm:
                dists[target] = dist
                dists[idx[nev[idx]]] = float("nan")  # no distance for a point not evaluated
            if cascade:
                robust[idx] &= still[idx]
            task.advance(len(idx) - len(target))
            if store is not None:
                store.put_partial(key, _slot(a), k, robust[idx].tolist(), s.counted.forward_images - c_f0,
                                  s.counted.backward_images - c_b0, time.time() - c_t0,
                                  dists[idx].tolist() if a.min_norm else None, nev[idx].tolist())
        if dinfo.enabled:
            robust = _gather_flags(robust, mine, dinfo, chunk_size)
            nev = _gather_flags(nev, mine, dinfo, chunk_size)
            if a.min_norm:
                dists = _gather_flags(dists, mine, dinfo, chunk_size)
        still &= robust
        fwd, bwd = ddist.all_sum([s.counted.forward_images - fwd0 + stored_f,
                                  s.counted.backward_images - bwd0 + stored_b], dinfo, dev)
        report = a.extra.get("report")  # a cascade's record of the chunks it ran (attacks.fast)
        stages = report() if report is not None else None
        done.append(AttackOutcome(a, robust, dists if a.min_norm else None, time.time() - t0 + stored_seconds,
                                  Passes(int(fwd), int(bwd)), composition, nev, counts[0], stages=stages))
        s.counted.on_forward = None
        task.close()
    return done


def ensemble_outcome(a: Attack, done: List[AttackOutcome], evaluable: torch.Tensor) -> AttackOutcome:
    """An ensemble (``min-l2`` ...) from its members' outcomes, already run and re-checked: per
    point the smallest member distance (``minimal.minimum_over``), robust where every member left
    the point robust, not evaluated where no member broke it and one could not process it; its
    cost is the members' sum; ``best_of`` counts, per member, the points where it found the
    minimum (first member on ties)."""
    from ..attacks.minimal import minimum_over

    outs = [next(o for o in done if (o.attack.key, o.attack.params) == (m.key, m.params))
            for m in a.extra["members"]]
    best, which = minimum_over([torch.where(torch.isnan(o.distances), float("inf"), o.distances) for o in outs])
    nevs = [o.not_evaluated if o.not_evaluated is not None else torch.zeros_like(evaluable) for o in outs]
    broken = torch.zeros_like(evaluable)
    for o, bad in zip(outs, nevs):
        broken |= evaluable & ~o.robust & ~bad
    nev = torch.stack(nevs).any(0) & ~broken
    robust = evaluable & ~broken & ~nev
    best = torch.where(nev, torch.full_like(best, float("nan")), best)
    solved = torch.isfinite(best) & (best > 0)
    best_of = {m.key: int(((which == i) & solved).sum()) for i, m in enumerate(a.extra["members"])}
    return AttackOutcome(a, robust, best, sum(o.seconds for o in outs),
                         Passes(sum(o.passes.forward for o in outs), sum(o.passes.backward for o in outs)), {},
                         nev, 0, best_of)


def _summary(flags: List[bool], labels: List[int], num_classes: int, clean: float) -> dict:
    s = metrics.summary(flags, labels, num_classes, clean)
    s["worst_class"] = WorstClass(**{"cls": s["worst_class"]["class"],
                                     "robust_accuracy": s["worst_class"]["robust_accuracy"]})
    return s


def assemble(p: Plan, s: Session, correct: torch.Tensor, outcomes: List[AttackOutcome], probe_g, budget, *,
             seed, cascade, batch_size, chunk_size, channels_last, provenance, t_start,
             finite: Optional[torch.Tensor] = None) -> EvalResult:
    """Stage 5: statistics (Wilson intervals, per class, rho_adv), the validity flags and the
    provenance, as an EvalResult.  Points not evaluated (a NaN/inf input gradient, or an attack
    that could not process them) count as not robust and are reported, with a flag."""
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
        nev = o.not_evaluated.nonzero().flatten().tolist() if o.not_evaluated is not None else []
        attacks[a.key] = AttackResult(**summ, backend=a.backend, params=a.params, seconds=o.seconds, passes=o.passes,
                                      note="cascade: attacked only points robust to the earlier attacks "
                                           "(cumulative)" if cascade else None,
                                      composition=o.composition or None, not_evaluated=len(nev) or None,
                                      best_of=o.best_of, stages=o.stages)
        per_sample.robust[a.key] = flags
        if nev:
            per_sample.not_evaluated = per_sample.not_evaluated or {}
            per_sample.not_evaluated[a.key] = nev
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
    flags = list(s.flags)
    if finite is not None and not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        flags.append({"name": "nan_gradients", "message": f"{len(bad)} point(s) have a NaN or infinite input "
                      "gradient: not evaluated by any attack and counted as not robust",
                      "evidence": {"points": len(bad), "index": bad[:20]}})
    nev_counts = {k: v.not_evaluated for k, v in attacks.items() if v.not_evaluated}
    if nev_counts:
        flags.append({"name": "not_evaluated", "message": "some points were not evaluated (NaN gradients, or an "
                      "attack output that was NaN, of the wrong shape, or outside the budget or [0, 1]): "
                      "they are counted as not robust", "evidence": {"attacks": nev_counts}})
    outside = {o.attack.key: o.outside_budget for o in outcomes if o.outside_budget}
    if outside:
        flags.append({"name": "outside_budget", "message": "an attack returned misclassified points outside the "
                      "budget or [0, 1]: kdbench gave them no credit (the attack is misconfigured or buggy)",
                      "evidence": {"attacks": outside}})
    flags += validity.check(n_total, correct_list, {k: v.robust_accuracy for k, v in attacks.items()},
                            per_sample.robust, probe_g) + (budget["flags"] if budget else [])
    ws = _summary(still.tolist(), labels, s.num_classes, clean)
    own = [o for o in outcomes if not o.attack.extra.get("members")]  # members counted where they ran
    secs = sum(o.seconds for o in own)
    cost = Cost(sum(o.passes.forward for o in own), sum(o.passes.backward for o in own), secs,
                n_total / secs if secs > 0 else None,
                secs * s.dinfo.world if s.dev.type == "cuda" else None)
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
        min_perturbation=min_pert or None, sensitivity=sens, cost=cost,
        confidence=sum(probe_g["confidence"]) / n_total if probe_g is not None else None,
        worst_case=WorstCase(ws["robust_accuracy"], ws["ci95"], ws["w_robust"], ws["worst_class"], p.specs),
        provenance=Provenance(
            kdbench_version=__version__, git_commit=_git_commit(), libraries=_versions(), device=str(s.dev),
            dtype=str(p.x.dtype).replace("torch.", ""), seed=seed, dataset=p.data, world_size=s.dinfo.world,
            model=_with_content(from_json(ModelProvenance, model_prov) if isinstance(model_prov, dict)
                                else model_prov or ModelProvenance(spec=None), s.model_sha256),
            extra=prov, start_time=t_start.isoformat(), end_time=datetime.now(timezone.utc).isoformat(),
            key=s.key))


def _with_content(m: ModelProvenance, sha: str) -> ModelProvenance:
    m.content_sha256 = sha
    return m


def evaluate(model: nn.Module, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None, *,
             dataset: Union[None, str, Dataset] = None, n: Optional[int] = None,
             attacks: Optional[Sequence[str]] = None, suite: Optional[str] = None, eps: Optional[float] = None,
             norm: str = "Linf", batch_size: int = 256, device: str = "auto", seed: int = 0, cascade: bool = False,
             chunk_size: int = 1024, store=None, resume: bool = False, progress: Union[bool, str] = "log",
             provenance: Optional[dict] = None, checks: bool = True, checks_n: int = 200,
             checks_share: float = 0.1,
             channels_last: bool = False, sensitivity: bool = True, teachers: Optional[Sequence[nn.Module]] = None,
             teacher_names: Optional[Sequence[str]] = None, knn_reference: Optional[int] = 5000,
             tsne: Optional[str] = None, force: bool = False) -> EvalResult:
    """Evaluate ``model`` on ``(x, y)`` (float in [0, 1], NCHW) or on ``dataset``'s test split
    (a seeded subset of ``n`` points).  ``checks=False`` skips the budget validity checks and
    ``sensitivity=False`` the gradient probe (sensitivity, confidence and the gradient-based
    flags); both are on by default.  With ``teachers``, the distillation metrics of
    :mod:`kdbench.evaluation.distill` are added under ``distillation`` (k-NN on ``knn_reference``
    training images when a dataset is given; ``tsne`` a PNG path).  ``force`` allows a budget
    beyond the input space's diameter.  The checks and the probe together spend at most
    ``checks_share`` of the attacks' model passes (``validity.budget_checks``; at least 8 points).
    ``progress``: ``"log"`` (``logging``, logger ``kdbench``), ``True`` (bars on a terminal,
    lines otherwise), ``"bar"``, ``"lines"`` or ``False`` (:mod:`kdbench.progress`).  What is guaranteed (the model left as given, NaN and
    randomness handled, invariants checked before anything is stored): docs/guarantees.md.
    See docs/results.md."""
    t_start = datetime.now(timezone.utc)
    p = plan(x, y, dataset, n, attacks, suite, eps, norm, batch_size, chunk_size, force=force)
    saved = [model_state(m) for m in [model, *(teachers or [])]]  # evaluate() leaves the caller's models as given
    try:
        s = prepare(model, p, device=device, seed=seed, batch_size=batch_size, chunk_size=chunk_size,
                    cascade=cascade, channels_last=channels_last, provenance=provenance)
        if store is not None and s.dinfo.main:
            store.begin(s.key, s.identity, s.model_sha256, s.data_sha256, resume)
        ddist.barrier(s.dinfo)
        with Reporter(progress if s.dinfo.main else False) as rep:
            with rep.phase("clean pass" + (" + gradient probe" if sensitivity else ""), len(p.y)) as ph:
                correct, finite, probe_g = clean_pass(s, p.y, batch_size, sensitivity, ph)
            outcomes = attack_all(s, p.y, correct, seed=seed, batch_size=batch_size, chunk_size=chunk_size,
                                  cascade=cascade, store=store, resume=resume, reporter=rep, attackable=finite)
            budget = None
            if checks:
                s.model.stage = "the validity checks"
                sub = (correct & finite).nonzero().flatten()[:checks_n]
                spend = checks_share * sum(o.passes.forward + o.passes.backward for o in outcomes
                                           if not o.attack.extra.get("members"))
                spend -= len(p.y) if sensitivity else 0  # the probe's extra backward pass per point
                with rep.phase("validity checks", len(sub)) as ph:
                    budget = validity.budget_checks(s.model, s.x[sub], p.y[sub], p.eps, p.norm, seed, s.dev,
                                                    batch_size, budget=max(spend, 0.0), phase=ph) if len(sub) else None
            result = assemble(p, s, correct, outcomes, probe_g, budget, seed=seed, cascade=cascade,
                              batch_size=batch_size, chunk_size=chunk_size, channels_last=channels_last,
                              provenance=provenance, t_start=t_start, finite=finite)
            if teachers:
                from .distill import distillation_metrics

                s.model.stage = "the distillation metrics"
                train_x = train_y = None
                ds = p.dataset
                if ds is not None and knn_reference and ds.train is not None:
                    ridx, _ = ds.eval_indices(min(knn_reference, len(ds.train)), seed=0, split="train")
                    train_x, train_y = ds.train.images(ridx), ds.train.y[ridx]
                parts = 1 + len(teachers) + (train_x is not None) + (tsne is not None)
                with rep.phase("distillation metrics", parts, unit="parts") as ph:
                    result.distillation = from_json(Distillation, distillation_metrics(
                        s.model, list(teachers), s.x, p.y, eps=p.eps, norm=p.norm, dev=s.dev, batch_size=batch_size,
                        seed=seed, train_x=train_x, train_y=train_y,
                        teacher_names=list(teacher_names) if teacher_names else None, tsne_path=tsne, phase=ph))
        validity.invariants(result)  # a violated invariant is an error, never a row
    finally:
        for m, st in zip([model, *(teachers or [])], saved):
            restore_model(m, st)
    if store is not None and s.dinfo.main:
        try:
            result.store_id = store.finish(s.key, result)
        except KdbenchError as e:
            raise StoreWriteError(str(e), result) from None
    return result


class StoreWriteError(KdbenchError):
    """The evaluation finished but the store could not record it; ``result`` holds it, so the
    CLI still writes ``--out`` and prints the table before exiting 2."""

    def __init__(self, message: str, result: EvalResult):
        super().__init__(message)
        self.result = result


def _attack_chunk(a: Attack, counted, model, x, y, target, dev, batch_size, rng_seed, advance):
    """Run one attack on the points ``target`` of a chunk; return which of them it broke
    (after kdbench's own re-check: misclassified, inside [0, 1] and inside the budget), for
    minimal-perturbation attacks the distance found (inf where it failed), which points it could
    not process (a NaN or infinite output: not evaluated, never robust), and how many outputs
    were misclassified but outside the budget or [0, 1] (no credit to the attack; flagged)."""
    from ..attacks.cw import distance

    broken = torch.zeros(len(target), dtype=torch.bool)
    invalid = torch.zeros(len(target), dtype=torch.bool)
    dist = torch.full((len(target),), float("inf"), dtype=torch.float64)
    outside = [0]
    if len(target) == 0:
        return broken, dist, invalid, 0
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
        if not torch.is_tensor(xa) or tuple(xa.shape) != tuple(xb.shape):
            raise KdbenchError(f"attack {a.key} ({a.backend}) returned "
                               f"{tuple(xa.shape) if torch.is_tensor(xa) else type(xa).__name__} for inputs of "
                               f"shape {tuple(xb.shape)}")
        xa = xa.detach().to(dev, xb.dtype)
        ok = torch.isfinite(xa.flatten(1)).all(1)
        xa = torch.where(ok.view(-1, *[1] * (xa.dim() - 1)), xa, xb)  # a NaN row is re-checked as the clean image
        with torch.no_grad():
            pred = model(xa).argmax(1)
        in_box = (xa.flatten(1).min(1).values >= 0) & (xa.flatten(1).max(1).values <= 1)
        fooled = (pred != yb) & in_box
        inside = within_budget(xa - xb, a.norm, a.eps)
        broken[s:s + step] = (ok & fooled & inside).cpu()
        invalid[s:s + step] = (~ok).cpu()
        if not a.min_norm:
            outside[0] += int((ok & (pred != yb) & ~(in_box & inside)).sum())
        if a.min_norm:
            d = distance(xa.double() - xb.double(), a.min_norm).cpu()  # the norm in float64
            dist[s:s + step] = torch.where((ok & fooled).cpu(), d, torch.full_like(d, float("inf")))
        advance(len(sel))
    return broken, dist, invalid, outside[0]


def _gather_flags(robust: torch.Tensor, mine, dinfo, chunk_size: int) -> torch.Tensor:
    """Every rank's chunk outcomes, assembled in point order on every rank."""
    parts = ddist.gather_objects({k: robust[idx].tolist() for k, idx in mine}, dinfo)
    out = robust.clone()
    for d in parts:
        for k, flags in d.items():
            out[k * chunk_size:k * chunk_size + len(flags)] = torch.tensor(flags, dtype=out.dtype)
    return out
