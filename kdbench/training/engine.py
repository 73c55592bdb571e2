"""The one training loop every method runs through.

Per batch: ``x' = method.perturb(student, x, y)`` (inner maximisation, student unwrapped),
then ``loss = method.loss(student, x, x', y)`` with the student in train mode, one optimizer
step.  Per epoch: evaluation on a fixed test subset (clean and PGD accuracy), best/last
checkpoints, metrics history, and an atomic resume point holding weights, optimizer, method
state and every RNG state -- so ``--resume`` after a kill at any moment reaches exactly the
weights of an uninterrupted run (on CPU; CUDA kernels may be non-deterministic).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Reporter
from ..version import __version__
from ..attacks.pgd import mode, pgd
from ..config import TrainConfig, config_from_dict, merge
from ..data import Dataset, ImageSet, epoch_generator, get_dataset, index_hash, iterate, shard_indices
from ..device import resolve_device
from ..errors import KdbenchError
from ..methods import InnerMaxConfig, get_method
from ..models import build_model
from ..specs import require_trusted, resolve_model
from ..fsutil import clean_stale
from ..weights import atomic_write, save_weights
from .. import distributed as ddist
from .. import rundir, smoke


def resolve_config(cfg: TrainConfig, dataset: Dataset) -> TrainConfig:
    """Fill dataset- and method-dependent defaults (model, epochs, eps, step size, milestones)."""
    defaults = dataset.info.train_defaults  # each dataset's own (kdbench.data.datasets)
    over = {}
    if cfg.model is None:
        over["model"] = defaults["model"]
    if cfg.batch_size is None:
        over["batch_size"] = defaults.get("batch_size", 128)
    if cfg.epochs is None:
        over["epochs"] = defaults["epochs"]
        for k, v in defaults.items():
            if "." in k:
                over[k] = v
    cfg = merge(cfg, over)
    method_cls = get_method(cfg.method)
    eps = cfg.attack.eps if cfg.attack.eps is not None else dataset.info.eps
    steps = cfg.attack.steps if cfg.attack.steps is not None else method_cls.steps
    step = cfg.attack.step_size if cfg.attack.step_size is not None else method_cls.step_ratio * eps
    ms = cfg.schedule.milestones
    if ms is None and cfg.schedule.name == "multistep":
        ms = sorted({m for m in (int(cfg.epochs * 0.5), int(cfg.epochs * 0.75)) if m > 0})
    cfg = merge(cfg, {"attack.eps": float(eps), "attack.steps": int(steps), "attack.step_size": float(step),
                      "schedule.milestones": ms,
                      "eval.select": cfg.eval.select or method_cls.select_metric})
    if cfg.epochs <= 0 or cfg.batch_size <= 0:
        raise KdbenchError("epochs and batch_size must be positive")
    if eps <= 0:
        raise KdbenchError(f"eps must be positive, got {eps}")
    if cfg.eval.split not in ("test", "holdout"):
        raise KdbenchError(f"eval.split must be test or holdout, got {cfg.eval.split!r}")
    if cfg.eval.select not in ("clean", "pgd"):
        raise KdbenchError(f"eval.select must be clean or pgd, got {cfg.eval.select!r}")
    if cfg.eval.pgd_steps < 0 or cfg.eval.pgd_steps == 0 and cfg.eval.select == "pgd":
        raise KdbenchError(f"eval.pgd_steps = {cfg.eval.pgd_steps}: the monitor needs PGD steps > 0 to select "
                           "on pgd (0 monitors clean accuracy only, with eval.select=clean)")
    return cfg


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for a 0-based epoch (a pure function: nothing to restore on resume)."""
    base, s = cfg.optimizer.lr, cfg.schedule
    if s.name == "constant":
        return base
    if s.name == "multistep":
        return base * s.gamma ** sum(epoch >= m for m in (s.milestones or []))
    if s.name == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * epoch / cfg.epochs))
    raise KdbenchError(f"unknown schedule {s.name!r}; use multistep, cosine or constant")


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    raise KdbenchError(f"unknown optimizer {o.name!r}; use sgd or adam")


def load_teachers(specs: List[str], dataset: Dataset, device, data_dir=None) -> List[nn.Module]:
    teachers = []
    info = dataset.info
    probe = dataset.test.images(torch.arange(min(2, len(dataset.test)))).to(device)
    for spec in specs:
        lm = resolve_model(spec, info.num_classes, info.in_channels, info.input_size)
        t = lm.model.to(device).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            try:
                out = t(probe)
            except Exception as e:
                raise KdbenchError(f"teacher {spec!r} fails on {info.name} inputs "
                                   f"{tuple(probe.shape[1:])}: {type(e).__name__}: {str(e)[:120]}") from None
        if out.dim() != 2 or out.shape[1] != info.num_classes:
            raise KdbenchError(f"teacher {spec!r} outputs {out.shape[-1]} classes but {info.name} has "
                               f"{info.num_classes}")
        teachers.append(t)
    return teachers


def split_indices(dataset: Dataset, cfg: TrainConfig):
    """``(training indices or None for all, monitor image set, monitor indices)``.

    ``eval.split = test``: the monitor reads ``eval.n`` seeded test points (the papers' practice;
    they are a subset of ``kdbench evaluate``'s points, so selection sees evaluation points).
    ``holdout``: it reads ``eval.n`` training images that are never trained on
    (:meth:`Dataset.holdout_indices`).  ``train_subset`` draws from what is left, seeded by the run."""
    train = dataset.require_train()
    if cfg.eval.split == "holdout":
        mon_idx, pool = dataset.holdout_indices(cfg.eval.n)
        mon_set = train
    else:
        mon_idx, _ = dataset.eval_indices(cfg.eval.n, seed=0)
        mon_set, pool = dataset.test, None
    if not cfg.train_subset:
        return pool, mon_set, mon_idx
    if pool is None:
        return dataset.eval_indices(cfg.train_subset, seed=cfg.seed, split="train")[0], mon_set, mon_idx
    if cfg.train_subset > len(pool):
        raise KdbenchError(f"train_subset = {cfg.train_subset}: only {len(pool)} training images are left "
                           f"after holding out eval.n = {cfg.eval.n}")
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(cfg.seed)))[:cfg.train_subset]
    return pool[pick].sort().values, mon_set, mon_idx


def monitor(model: nn.Module, data: ImageSet, idx: torch.Tensor, eps: float, steps: int, batch_size: int,
            device, dist_info) -> Dict[str, float]:
    """Clean and PGD-``steps`` accuracy (CE, step 2.5 eps / steps, uniform start) on ``data[idx]``
    (clean only when ``steps`` is 0): the training-time monitor used for checkpoint selection.
    Reported numbers come from ``kdbench evaluate``."""
    shard = idx[dist_info.rank::dist_info.world] if dist_info.enabled else idx
    correct = robust = 0
    with torch.random.fork_rng(devices=[]), mode(model, train=False):
        torch.manual_seed(12345)
        for x, y in iterate(data, batch_size, device, indices=shard):
            with torch.no_grad():
                correct += (model(x).argmax(1) == y).sum().item()
            if steps == 0:
                continue
            xa = pgd(x, lambda xa: F.cross_entropy(model(xa), y, reduction="sum"), eps, 2.5 * eps / steps, steps)
            with torch.no_grad():
                robust += (model(xa).argmax(1) == y).sum().item()
    correct, robust, n = ddist.all_sum([correct, robust, len(shard)], dist_info, device)
    out = {"clean_acc": correct / max(n, 1)}
    if steps:
        out["pgd_acc"] = robust / max(n, 1)
    return out


class _PassCounter:
    """Counts images through a module's forward (training cost accounting)."""

    def __init__(self, modules):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, module, inputs):
        if inputs and torch.is_tensor(inputs[0]):
            self.n += inputs[0].shape[0]

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise KdbenchError(f"--out {out} is not writable ({e.strerror or type(e).__name__})") from None


def _refs(cfg: TrainConfig, teacher_paths: List[str], init_path, out: Path) -> dict:
    """``teacher_refs`` / ``init_ref``: each path-like teacher and init recorded by run-relative
    path and content (rundir.model_ref) under the spec the config keeps, so the run directory
    resolves them from any working directory and after being copied."""
    def ref(spec, path):
        r = rundir.model_ref(path, out)
        return None if r is None else {**r, "spec": spec}

    out_refs = {}
    if cfg.teachers:
        out_refs["teacher_refs"] = [ref(s, p) for s, p in zip(cfg.teachers, teacher_paths)]
    if cfg.init_from:
        out_refs["init_ref"] = ref(cfg.init_from, init_path)
    return out_refs


def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])



class NonFiniteLoss(KdbenchError):
    """The loss of a batch is NaN or infinite (the loop adds the epoch and the checkpoint kept)."""


def train_step(method, student: nn.Module, wrapped: nn.Module, x, y, optimizer, scaler=None,
               autocast=nullcontext):
    """One batch, as every method trains: ``x' = method.perturb(student, x, y)``, the student in
    train mode, ``method.loss(wrapped, x, x', y)``, one optimizer step.  Returns (loss, logits),
    or None when the method skips the batch; the step is what tests/methods/test_official_steps.py
    compares with each official script."""
    with autocast():
        x_adv = method.perturb(student, x, y)
    student.train()
    with autocast():
        loss, logits = method.loss(wrapped, x, x_adv, y)
    if loss is None:
        return None
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss.item()}")
    scaler = scaler or torch.amp.GradScaler(enabled=False)  # disabled: a plain backward and step
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def train(cfg: TrainConfig, out, resume: bool = False, progress: Union[bool, str] = "log",
          trust_code: bool = False) -> List[dict]:
    """Train ``cfg.method`` into run directory ``out``; returns the metrics history.  On
    ``resume`` the run's own config is used; code it names (a ``file.py:factory`` teacher) is
    imported only if ``cfg`` names it too (the command line) or ``trust_code``.  ``progress``: as
    :func:`kdbench.evaluate`'s (:mod:`kdbench.progress`; the API logs through ``logging``).
    A run that fails before its first epoch is saved leaves no directory it created behind."""
    out = Path(out)
    created = not out.exists()
    try:
        return _train(cfg, out, resume, progress, trust_code)
    except BaseException:
        if created and out.is_dir() and not (out / rundir.STATE).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, out: Path, resume: bool, progress, trust_code: bool) -> List[dict]:
    state_path = out / rundir.STATE
    if resume:
        if not (out / rundir.CONFIG).is_file():
            raise KdbenchError(f"--resume: {out} has no {rundir.CONFIG}; nothing to resume")
        saved = rundir.read_run_config(out)
        named = set(cfg.teachers) | {cfg.init_from}
        for spec in [*(saved.get("teachers") or []), saved.get("init_from")]:
            if spec and spec not in named:
                require_trusted(spec, f"{out / rundir.CONFIG}", trust_code)
        cfg = merge(config_from_dict(saved),
                    {"epochs": cfg.epochs if cfg.epochs and cfg.epochs > saved["epochs"] else None,
                     "device": cfg.device if cfg.device != "auto" else None})
        # the recorded teachers / init, found from wherever the run is now (rundir.resolve_ref)
        teacher_paths, init_path = rundir.run_refs(out, saved)
    elif state_path.exists():
        raise KdbenchError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    if not resume:
        teacher_paths, init_path = list(cfg.teachers), cfg.init_from
    probe_dev = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) \
        else "cpu"
    dinfo = ddist.init_distributed(probe_dev)
    device = resolve_device(cfg.device, dinfo.local_rank)
    if dinfo.main:
        _check_writable(out)
        clean_stale(out)  # temp files a killed run left behind
    dataset = get_dataset(cfg.dataset, cfg.data_dir)
    train_set = dataset.require_train()
    cfg = resolve_config(cfg, dataset)
    train_idx, monitor_set, monitor_idx = split_indices(dataset, cfg)
    if train_idx is not None:
        train_set = train_set.subset(train_idx)
    cuda = device.type == "cuda"
    amp = cfg.amp if cfg.amp is not None else cuda
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    amp_dtype = torch.bfloat16 if (cuda and torch.cuda.is_bf16_supported()) else torch.float16

    torch.manual_seed(cfg.seed + dinfo.rank)
    info = dataset.info
    teachers = load_teachers(teacher_paths, dataset, device)
    method_cls = get_method(cfg.method)
    student = build_model(cfg.model, info.num_classes, info.in_channels, info.input_size, **cfg.model_kwargs)
    student = method_cls.build_student(student, dict(cfg.method_params), len(teachers), info.num_classes)
    if init_path:
        from ..weights import load_weights

        load_weights(student, rundir.run_weights(init_path) if rundir.is_run_dir(init_path) else init_path)
    student = student.to(device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    attack = InnerMaxConfig(cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps)
    method = method_cls(dict(cfg.method_params), attack, teachers, info.num_classes)
    augment = info.augment if cfg.augment is not False else None
    method.prepare(student, train_set, augment, fresh=not cfg.init_from and not (resume and state_path.exists()))
    optimizer = make_optimizer(cfg, student.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    wrapped = student
    if dinfo.enabled:
        wrapped = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if cuda else None)

    resolved = {"kdbench_version": __version__, **cfg.to_dict(), "dataset_info": info.to_dict(),
                "resolved": {"amp": amp, "amp_dtype": str(amp_dtype).replace("torch.", "") if amp else None,
                             "channels_last": channels_last, "world_size": dinfo.world, "device": str(device),
                             "train_size": len(train_set),
                             "monitor": {"split": cfg.eval.split, "n": len(monitor_idx),
                                         "indices_sha256": index_hash(monitor_idx)},
                             **_refs(cfg, teacher_paths, init_path, out),
                             **({"smoke": dict(smoke.CAPS)} if smoke.active() else {})}}
    history: List[dict] = []
    start_epoch, best = 0, -1.0
    if resume and state_path.exists():
        try:
            st = torch.load(state_path, map_location="cpu", weights_only=True)
            if not isinstance(st, dict) or not {"model", "optimizer", "epoch", "best", "history", "rng"} <= set(st):
                raise ValueError("missing keys")
            student.load_state_dict(st["model"])
            optimizer.load_state_dict(st["optimizer"])
            if st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            method.load_state_dict(st.get("method", {}))
            start_epoch, best, history = int(st["epoch"]) + 1, float(st["best"]), list(st["history"])
            _set_rng_state(st["rng"][dinfo.rank] if dinfo.rank < len(st["rng"]) else st["rng"][0])
        except Exception as e:  # truncated, foreign, wrong keys or shapes: one line, nothing touched
            msg = " ".join(str(e).split())[:160]
            raise KdbenchError(f"{state_path}: not a usable resume point ({type(e).__name__}: {msg}); delete it "
                               "to restart the run, or restore it") from None
    if dinfo.main:
        rundir.write_config(out, resolved)

    counter_s = _PassCounter([student])
    counter_t = _PassCounter(teachers)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp else nullcontext
    reporter = Reporter(progress if dinfo.main else False, transient=False)
    n_batches = math.ceil(math.ceil(len(train_set) / dinfo.world) / cfg.batch_size)
    try:
        with reporter:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                lr = method.adjust_lr(epoch, cfg.epochs, lr_at(cfg, epoch), cfg.optimizer.lr,
                                      cfg.schedule.milestones, cfg.schedule.gamma)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                method.begin_epoch(epoch, cfg.epochs, lr / cfg.optimizer.lr)
                gen = epoch_generator(cfg.seed, epoch)
                order = shard_indices(len(train_set), gen, dinfo.rank, dinfo.world)
                task = reporter.phase(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", n_batches, unit="batches")
                loss_sum = correct = seen = 0.0
                for x, y in iterate(train_set, cfg.batch_size, device, indices=order, generator=gen,
                                    augment=augment):
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    try:
                        stepped = train_step(method, student, wrapped, x, y, optimizer, scaler, autocast)
                    except NonFiniteLoss as e:
                        raise KdbenchError(f"{e} at epoch {epoch + 1}; lower the learning rate (the last good "
                                           f"checkpoint is kept in {out})") from None
                    if stepped is None:  # the method skips this batch (DARHT's released skip-if-CE>8)
                        task.advance()
                        continue
                    loss, logits = stepped
                    loss_sum += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    seen += len(y)
                    task.text = f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}"
                    task.advance()
                loss_sum, correct, seen = ddist.all_sum([loss_sum, correct, seen], dinfo, device)
                seen = max(seen, 1)  # every batch may have been skipped (DARHT's skip_ce)
                rec = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                       "student_forward_images": counter_s.take(), "teacher_forward_images": counter_t.take()}
                if cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.epochs):
                    rec.update(monitor(student, monitor_set, monitor_idx, cfg.attack.eps, cfg.eval.pgd_steps,
                                       cfg.eval.batch_size, device, dinfo))
                    counter_s.take(), counter_t.take()  # the monitor's passes are not training cost
                rec["seconds"] = time.time() - t0
                history.append(rec)
                metric = rec.get(f"{cfg.eval.select}_acc")
                improved = metric is not None and metric > best
                if improved:
                    best = metric
                rngs = ddist.gather_objects(_rng_state(), dinfo)
                if dinfo.main:
                    meta = {"epoch": str(epoch + 1), "method": cfg.method, "kdbench": __version__}
                    save_weights(student, out / rundir.LAST, meta)
                    if improved:
                        save_weights(student, out / rundir.BEST, {**meta, "select": cfg.eval.select})
                    state = {"epoch": epoch, "best": best, "history": history,
                             "model": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                             "method": method.state_dict(), "rng": rngs}
                    rundir.write_metrics(out, history)
                    atomic_write(state_path, lambda p: torch.save(state, p))
                ddist.barrier(dinfo)
                task.close()
                if dinfo.main:
                    ev = f" clean {rec['clean_acc']:.3f}" if "clean_acc" in rec else ""
                    ev += f" pgd {rec['pgd_acc']:.3f}" if "pgd_acc" in rec else ""
                    reporter.print(f"epoch {epoch + 1}: loss {rec['train_loss']:.4f} "
                                   f"train acc {rec['train_acc']:.3f}{ev} ({rec['seconds']:.1f}s)")
    finally:
        for h in counter_s.handles + counter_t.handles:
            h.remove()
        ddist.cleanup(dinfo)
    return history

