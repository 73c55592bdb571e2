"""The ``fast`` attack (and suite): AutoAttack-grade verdicts for a fraction of AutoAttack's model
passes, with AutoAttack's safety net against gradient masking measured instead of paid in full
(docs/evaluate.md, "The fast suite").

A cheapest-first cascade on each chunk's clean-correct points; each stage attacks only the points
every earlier stage left robust, and every x' a stage returns is re-checked here (prediction,
[0, 1] box, budget) before the point counts as broken (the pipeline re-checks the final x' again).
Inside the APGD stages a point also stops the moment a pass verifies it (:class:`StopSolved`):
the library's loop goes on, but the solved rows are no longer run.

1. ``pgd``: PGD with ``pgd_steps`` steps of eps/4, stopping on each point at its first fooling
   iterate (``attacks.pgd.early_stop_pgd``): the non-robust points go for a few passes each;
2. ``apgd-ce``: pyautoattack's APGD on cross-entropy with ``ce_iter`` iterations (AutoAttack: 100;
   here a filter before the targeted stage, 20 by default);
3. ``apgd-t``: pyautoattack's APGD on the targeted DLR loss, ``t_iter`` iterations per target, on
   the ``targets`` classes ranked first by MALT's mesoscopic almost-linearity score (Melamed et
   al., NeurIPS 2024): per class j the linearised distance to its boundary,
   ``(z_y - z_j) / ||grad_x (z_y - z_j)||_*`` (dual norm), smallest first -- where AutoAttack
   takes the 9 largest logits.  kdbench chooses the targets; the library attacks each one
   (``APGDAttack_targeted.attack_single_run`` with ``y_target`` set).  Defaults 2 targets x 100
   iterations, chosen on the board's pgd-at row (2 x 50, 3 x 50 and 4 x 50 missed points
   AutoAttack's APGD-T broke; 2 x 100 missed only one that AutoAttack's own APGD-T misses with
   another seed);
4. ``square`` audit: pyautoattack's Square (``n_queries``, p_init 0.8) on a seeded random sample
   of ``audit`` survivors.  Square runs on every survivor (the *full* path) when the audit
   breaks a point, or when a masking signal fires on the attacked points: exactly zero input
   gradients or a saturated float32 softmax (top probability 1.0) on more than 5 % of them,
   outputs that differ between two passes over the same inputs, or the targeted margin stage
   breaking 3 or more points and more than 20 % of those it attacked after the cross-entropy
   stages (``ce_weaker_than_margin``; on healthy models it adds a few percent).  When the sample
   is every survivor (``audit_covers_all``), the audit is the full path.
   When the audit breaks none, the record states the bound it gives: with ``m`` audited points,
   a Square-only breakage rate ``r`` goes unseen with probability ``(1 - r)^m``, and the 95 %
   upper bound on the rate is ``1 - 0.05^(1/m)``.  ``audit=48`` (a 5 % rate caught with
   probability 0.91, a 10 % rate with 0.994; bound 6.1 %) was chosen on the board
   (docs/evaluate.md): the smallest audit that still sends the board's dd row (48 survivors, no
   masking signal) to the full path; median pass ratio 0.099 of AutoAttack's over the 21
   benchmark models (0.101 without early stop inside APGD; 0.117 with 64 points: 0.96, 4.6 %).

The record of each chunk (merged by ``extra["report"]`` into the result's ``attacks.fast.stages``) holds per stage
the points attacked and broken and the passes, and the audit's path, size, seed, breaks, reasons
and bound.  Every stage's randomness is seeded from ``seed``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ..errors import KdbenchError
from ..models import CountingModel
from .pgd import early_stop_pgd
from .registry import Built, register_attack


def _verified(x, xa, logits, y, eps, norm) -> torch.Tensor:
    """Where ``xa`` (with the model's ``logits`` at it) is a verified adversarial example of ``x``:
    misclassified, in [0, 1], in budget."""
    wrong = logits.detach().argmax(1) != y
    flat = (xa - x).detach().flatten(1)
    size = flat.abs().max(1).values if norm == "Linf" else flat.norm(dim=1)
    box = (xa.detach().flatten(1).min(1).values >= 0) & (xa.detach().flatten(1).max(1).values <= 1)
    return wrong & box & (size <= eps * (1 + 1e-6) + 1e-7)


def _fooled(model, x, xa, y, eps, norm) -> torch.Tensor:
    """:func:`_verified` with one forward pass at ``xa``."""
    with torch.no_grad():
        return _verified(x, xa, model(xa), y, eps, norm)


class StopSolved(torch.nn.Module):
    """The model as one library call on the fixed batch ``x`` sees it, with early stop per point: a
    row is run until a pass verifies it (misclassified, in [0, 1], in budget: :func:`_verified`, on
    that pass's own logits); from then on the row is not run again and returns those logits with
    no gradient.  APGD's updates are per row, so the other rows follow the same trajectory as
    without it; the solved rows cost no passes.  The library's own x' for a solved row is replaced
    by the verified one (:meth:`apply`): APGD keeps moving it by momentum.  Calls on another batch
    size (not this batch) go to the model unchanged."""

    def __init__(self, model, x, y, eps, norm):
        super().__init__()
        self.model, self.x, self.y, self.eps, self.norm = model, x.detach(), y, eps, norm
        self.solved = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.found = x.detach().clone()
        self.logits = None

    def forward(self, inp):
        if inp.shape[0] != len(self.x):
            return self.model(inp)
        live = (~self.solved).nonzero().flatten()
        z = self.model(inp[live]) if len(live) else None
        if self.logits is None:
            self.logits = torch.zeros(len(inp), z.shape[1], dtype=z.dtype, device=z.device)
        # the solved rows' stored logits, joined to the graph with zero gradient (the library
        # differentiates the whole batch)
        out = self.logits + 0 * inp.flatten(1)[:, :1]
        if z is None:
            return out
        out = out.index_put((live,), z.to(out.dtype))
        ok = _verified(self.x[live], inp[live], z, self.y[live], self.eps, self.norm)
        done = live[ok]
        self.solved[done] = True
        self.found[done] = inp[done].detach()
        self.logits[done] = z.detach()[ok]
        return out

    def apply(self, xa):
        """``xa`` (the library's x') with the verified x' on the solved rows."""
        xa = xa.detach().clone()
        xa[self.solved] = self.found[self.solved]
        return xa


def _margin_grad(z, x, y, j, retain):
    """``grad_x (z_y - z_j)`` per point, flattened."""
    g, = torch.autograd.grad((z.gather(1, y[:, None]).squeeze(1) - z[:, j]).sum(), x, retain_graph=retain)
    return g.flatten(1)


def malt_targets(model, x: torch.Tensor, y: torch.Tensor, k: int, norm: str) -> torch.Tensor:
    """The ``k`` target classes per point ranked by MALT's almost-linearity score: the linearised
    distance ``(z_y - z_j) / ||grad_x (z_y - z_j)||_*`` to each class's boundary, smallest first
    (``_*``: L1 for an L-inf budget, L2 for L2).  One forward and one backward per class, through a
    retained graph; where the backward refuses a retained graph (a ``torch.compile``d model's
    backward with donated buffers), one forward per class instead."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        c = z.shape[1]
        try:
            grads = [_margin_grad(z, x, y, j, retain=j < c - 1) for j in range(c)]
        except RuntimeError as e:
            if "retain_graph" not in str(e):
                raise
            grads = [_margin_grad(model(x), x, y, j, retain=False) for j in range(c)]
    g = torch.stack(grads, 1)  # B x C x D
    dual = g.abs().sum(2) if norm == "Linf" else g.norm(dim=2)
    zy = z.gather(1, y[:, None]).squeeze(1)
    score = (zy[:, None] - z).detach() / dual.clamp_min(1e-12)
    score.scatter_(1, y[:, None], float("inf"))
    return score.argsort(1)[:, :max(1, min(k, c - 1))]


def _masking_signals(model, x, y) -> Dict[str, float]:
    """Fractions of the points with an exactly zero CE input gradient and with a saturated float32
    softmax, and whether two passes over the same inputs differ (randomness)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(xg)
        g, = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), xg)
    zero = (g.flatten(1).abs().max(1).values == 0).float().mean().item()
    saturated = (F.softmax(z.detach().float(), 1).max(1).values >= 1.0).float().mean().item()
    with torch.no_grad():
        k = min(len(x), 16)
        random = not torch.equal(model(x[:k]), model(x[:k]))
    return {"zero_gradients": zero, "saturated_softmax": saturated, "randomized": float(random)}


def fast_run(eps, norm, seed, num_classes, pgd_steps, ce_iter, targets, t_iter, audit, n_queries):
    """``run(model, x, y) -> x_adv`` for the fast cascade (module docstring); ``run.report()``
    returns the record of the calls (chunks) since its last call."""
    reports: List[dict] = []

    def run(model, x, y):
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.square import SquareAttack

        x, y = x.detach(), y.detach()
        dev = x.device
        x_adv = x.clone()
        alive = torch.ones(len(x), dtype=torch.bool, device=dev)
        stages: Dict[str, dict] = {}

        def record(name, cm, attacked, broken=0):
            rec = stages.setdefault(name, {"attacked": 0, "broken": 0, "forward": 0, "backward": 0})
            for k, v in (("attacked", attacked), ("broken", broken), ("forward", cm.forward_images),
                         ("backward", cm.backward_images)):
                rec[k] += v
            return rec

        def stage(name, fn, idx):
            """Run ``fn(counted_model, idx) -> x'`` on the points ``idx``; keep the verified breaks."""
            cm = CountingModel(model)
            broken = 0
            if len(idx):
                xa = fn(cm, idx).detach()
                ok = _fooled(model, x[idx], xa, y[idx], eps, norm)
                x_adv[idx[ok]] = xa[ok]
                alive[idx[ok]] = False
                broken = int(ok.sum())
            return record(name, cm, len(idx), broken)

        def survivors():
            return alive.nonzero().flatten()

        torch.manual_seed(seed)
        attacked = survivors()
        cm = CountingModel(model)
        signals = _masking_signals(cm, x, y) if len(x) else {}
        record("signals", cm, len(x))

        def pgd(m, idx):
            return early_stop_pgd(m, x[idx], y[idx], eps, norm, pgd_steps, eps / 4)[1]

        stage("pgd", pgd, attacked)

        def apgd_ce(m, idx):
            m = StopSolved(m, x[idx], y[idx], eps, norm)
            a = APGDAttack(m, norm=norm, eps=eps, n_iter=ce_iter, n_restarts=1, loss="ce", seed=seed, device=dev)
            return m.apply(a.perturb(x[idx], y[idx]))

        stage("apgd-ce", apgd_ce, survivors())
        before_t = int(alive.sum())
        if num_classes > 2 and targets > 0:
            live = survivors()
            cm = CountingModel(model)
            ranked = malt_targets(cm, x[live], y[live], targets, norm) if len(live) else None
            record("malt", cm, len(live))
            pos = {int(i): p for p, i in enumerate(live.tolist())}  # a point's row in ranked
            for r in range(min(targets, ranked.shape[1]) if ranked is not None else 0):
                idx = survivors()

                def apgd_t(m, idx, r=r):
                    m = StopSolved(m, x[idx], y[idx], eps, norm)
                    a = APGDAttack_targeted(m, norm=norm, eps=eps, n_iter=t_iter, n_restarts=1, seed=seed,
                                            device=dev, n_target_classes=1)
                    a.init_hyperparam(x[idx])
                    torch.manual_seed(seed + r)
                    a.y_target = ranked[[pos[int(i)] for i in idx.tolist()], r]
                    return m.apply(a.attack_single_run(x[idx], y[idx])[3])

                stage("apgd-t", apgd_t, idx)
        margin_gain = before_t - int(alive.sum())
        # the safety net: Square on an audit sample of the survivors, on all of them when needed
        reasons = [k for k in ("zero_gradients", "saturated_softmax") if signals.get(k, 0) > 0.05]
        if signals.get("randomized"):
            reasons.append("randomized")
        if margin_gain >= 3 and margin_gain > 0.2 * before_t:
            reasons.append("ce_weaker_than_margin")
        live = survivors()
        g = torch.Generator().manual_seed(seed)
        sample = live[torch.randperm(len(live), generator=g)[:audit].to(dev)] if len(live) else live

        def square(m, idx):
            sq = SquareAttack(m, p_init=0.8, n_queries=n_queries, eps=eps, norm=norm, n_restarts=1, seed=seed,
                              device=dev, resc_schedule=False)
            return sq.perturb(x[idx], y[idx])

        rec = stage("square-audit", square, sample)
        audit_broke = rec["broken"]
        broke_at = (~alive[sample]).nonzero().flatten().tolist()  # positions in the seeded audit order
        if audit_broke:
            reasons.append("audit_broke")
        if not reasons and len(live) and len(sample) == len(live):
            reasons.append("audit_covers_all")  # Square ran on every survivor: the full path
        path = "full" if reasons else "audit"
        if reasons and len(sample) < len(live):
            rest = alive.clone()
            rest[sample] = False  # the audited points were attacked already
            stage("square-full", square, rest.nonzero().flatten())
        m = len(sample)
        stages["audit"] = {"path": path, "reasons": reasons, "size": m, "of": len(live), "broken": audit_broke,
                           "broken_at": broke_at, "points": sample.tolist(), "seed": seed, "signals": signals,
                           "margin_gain": margin_gain,
                           "catch_5pct": 1 - 0.95 ** m if m else 0.0,
                           "rate_bound_95": (1 - 0.05 ** (1 / m)) if m and not audit_broke else None}
        reports.append(stages)
        return x_adv

    def report():
        """The evaluation's record (:func:`merge_reports`) of the chunks run since the last call."""
        out = merge_reports(reports)
        reports.clear()
        return out or None

    run.report = report
    return run


def merge_reports(reports: List[dict]) -> dict:
    """One record for the evaluation from the chunks' records: counts summed; the audit's path
    ``full`` where any chunk went full, its sizes and breaks summed, its reasons joined, the bound
    computed over all the audited points."""
    out: dict = {}
    for rep in reports:
        for name, rec in rep.items():
            if name == "audit":
                a = out.setdefault("audit", {"path": "audit", "reasons": [], "size": 0, "of": 0, "broken": 0,
                                             "seed": rec["seed"], "chunks": 0, "broken_at": [], "signals": []})
                a["broken_at"].append(rec.get("broken_at", []))
                a.setdefault("points", []).append(rec.get("points", []))
                a["signals"].append(rec.get("signals", {}))
                a["path"] = "full" if "full" in (a["path"], rec["path"]) else "audit"
                a["reasons"] = sorted(set(a["reasons"]) | set(rec["reasons"]))
                for k in ("size", "of", "broken"):
                    a[k] += rec[k]
                a["chunks"] += 1
                continue
            cur = out.setdefault(name, {"attacked": 0, "broken": 0, "forward": 0, "backward": 0})
            for k in cur:
                cur[k] += rec[k]
    a = out.get("audit")
    if a is not None:
        m = a["size"]
        a["catch_5pct"] = 1 - 0.95 ** m if m else 0.0
        a["rate_bound_95"] = (1 - 0.05 ** (1 / m)) if m and not a["broken"] else None
    return out


@register_attack("fast", backends=("kdbench",), builtin=True, min_classes=2)
def fast(eps, norm, seed, num_classes, backend, pgd_steps=10, ce_iter=20, targets=2, t_iter=100, audit=48,
         n_queries=5000):
    if int(targets) < 0 or int(audit) < 0:
        raise KdbenchError("fast: targets and audit must be >= 0")
    run = fast_run(eps, norm, seed, num_classes, int(pgd_steps), int(ce_iter), int(targets), int(t_iter),
                   int(audit), int(n_queries))
    return Built(run, extra={"report": run.report},
                 params={"eps": eps, "norm": norm, "seed": seed, "pgd_steps": pgd_steps, "ce_iter": ce_iter,
                         "targets": targets, "target_rank": "MALT", "t_iter": t_iter, "audit": audit,
                         "n_queries": n_queries, "p_init": 0.8,
                         "library": "pyautoattack (APGD-CE, APGD-T, Square)"}, library_batches=True)
