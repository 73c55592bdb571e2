"""Gradient sensitivity, confidence and validity checks (seed 000 III-B and V-D; Carlini et al.
2019, "On Evaluating Adversarial Robustness"; AutoAttack's own checks).  A flag is
``{"name", "evidence": {...}, "message"}``; kdbench never reports masking as robustness silently."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..attacks.pgd import early_stop_pgd
from ..attacks.registry import entries, entry_of



def new_probe() -> Dict[str, list]:
    return {"sensitivity": [], "ce_grad_max": [], "confidence": [], "probabilities": True}


def probe_batch(out: Dict[str, list], z: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Add one batch's probe figures to ``out`` from its logits ``z`` (with the graph to ``xb``):
    per sample the mean |d F_c / d x| (F = softmax of the logits, c the predicted class; seed 000
    Eq. 10 at T = 1), the largest |d CE / d x|, the confidence (Eq. 14: top probability when
    correct, else 0), and whether the outputs look like probabilities.  Returns the CE input
    gradient (the clean pass's finiteness check shares it)."""
    p = F.softmax(z, 1)
    top, pred = p.max(1)
    g_s, = torch.autograd.grad(top.sum(), xb, retain_graph=True)
    g_ce, = torch.autograd.grad(F.cross_entropy(z, yb, reduction="sum"), xb)
    zd = z.detach()
    out["probabilities"] &= bool((zd >= 0).all() and (zd <= 1).all() and
                                 torch.allclose(zd.sum(1), torch.ones_like(zd[:, 0]), atol=1e-3))
    out["sensitivity"] += g_s.abs().flatten(1).mean(1).tolist()
    out["ce_grad_max"] += g_ce.abs().flatten(1).max(1).values.tolist()
    out["confidence"] += torch.where(pred == yb, top.detach(), torch.zeros_like(top)).tolist()
    return g_ce


def _flag(name: str, message: str, **evidence) -> dict:
    return {"name": name, "message": message, "evidence": evidence}


def check(n: int, correct: List[bool], acc: Dict[str, float], ps: Dict[str, List[bool]],
          probe: Dict[str, list] | None) -> List[dict]:
    """The checks that need only the suite's per-sample results (``acc``: each attack's robust
    accuracy, ``ps``: its per-sample outcomes) and the gradient probe, when run.  Which attacks
    pair up is read from their registry entries (margin_of, white_box, single_step, iterative_ce)."""
    flags = []
    tol = max(2 / n, 2 * math.sqrt(0.25 / max(n, 1)))  # about two standard errors at p = 0.5
    if probe is not None and probe["probabilities"]:
        flags.append(_flag("outputs_are_probabilities", "the model returns probabilities, not logits: "
                           "CE attacks on them are weak; return logits", sample_rows_sum_to_one=True))
    cc = [g for g, c in zip(probe["ce_grad_max"], correct) if c] if probe is not None else []
    zero = sum(1 for g in cc if g == 0.0) / max(len(cc), 1)
    if zero > 0.05:
        flags.append(_flag("zero_gradients", f"{zero:.0%} of clean-correct points have an exactly zero "
                           "cross-entropy input gradient (saturated softmax or a non-differentiable model)",
                           fraction=zero, n=len(cc)))
    entry = {k: entry_of(k) for k in ps}
    name_of = {k: e.name if e is not None else None for k, e in entry.items()}
    # like-for-like budgets: PGD vs CW-inf (same steps and step), APGD-CE vs APGD-T (entries' margin_of)
    for ce_name, mg_name in [(e.name, e.margin_of) for e in entries() if e.margin_of]:
        ce = [k for k in acc if name_of[k] == ce_name]
        mg = [k for k in acc if name_of[k] == mg_name]
        if ce and mg:
            c, m = min(ce, key=acc.get), min(mg, key=acc.get)
            if acc[c] - acc[m] > max(tol, 0.03):
                flags.append(_flag("ce_weaker_than_margin", f"{m} (margin loss) leaves {acc[c] - acc[m]:.1%} less "
                                   f"robust accuracy than {c} (cross-entropy) at the same budget: typical of "
                                   "gradient masking by logit scaling", ce_attack=c, ce_robust=acc[c],
                                   margin_attack=m, margin_robust=acc[m]))
                break
    wb = [k for k in ps if entry[k] is not None and entry[k].white_box]
    for k in ps:
        if entry[k] is not None and entry[k].builtin and not entry[k].white_box and wb:
            only = sum(1 for i in range(n) if not ps[k][i] and all(ps[w][i] for w in wb))
            if only / n > 0.002:
                flags.append(_flag("black_box_beats_white_box", f"Square broke {only} point(s) every white-box "
                                   "attack missed: the gradients mislead", points=only, fraction=only / n))
    fg = [k for k in acc if entry[k] is not None and entry[k].single_step]
    it = [k for k in acc if entry[k] is not None and entry[k].iterative_ce]
    if fg and it and acc[fg[0]] < min(acc[k] for k in it) - tol:
        flags.append(_flag("single_step_beats_iterative", "FGSM is stronger than the iterative attacks: a "
                           "step size or gradient problem", fgsm=acc[fg[0]], iterative=min(acc[k] for k in it)))
    return flags


BLOCK = 8  # points per block of the budget checks


def budget_checks(model, x, y, eps: float, norm: str, seed: int, dev, batch_size: int,
                  budget: Optional[float] = None, min_points: int = 8, phase=None) -> dict:
    """Carlini et al. (2019) items 3-6 on a subset: PGD-20 accuracy must fall as eps grows (eps x
    {0.5, 1, 2, 4}), reach about zero at a budget that can turn any image into any other
    (PGD-100 at L-inf 1 / L2 sqrt(d)), and not drop beyond its interval under 100-step restarts.

    Cheap by construction: every PGD stops per point at the first misclassified iterate
    (:func:`early_stop_pgd`), restarts attack only the points every earlier attempt missed, and
    ``budget`` caps the spend in model passes (forward + backward images; the pipeline gives 10 %
    of the attacks' passes, less the probe's).  Half of it goes to the sweep, taken in blocks of
    8 points while the average cost so far says the next block fits (at least ``min_points``);
    the rest to the convergence check, up to 5 PGD-100 restarts on as many of the sweep's points
    as one restart's most (101 passes per PGD-20-robust point) allows, further restarts while the
    budget lasts.  ``budget=None``: every point, 5 restarts.  The result records each part's
    points, the restarts and the passes spent."""
    from .metrics import wilson

    torch.manual_seed(seed)
    x, y = x.to(dev), y.to(dev)
    scales = [0.5, 1.0, 2.0, 4.0]
    huge = 1.0 if norm == "Linf" else math.sqrt(x[0].numel())
    cap = float("inf") if budget is None else float(budget)
    spent = 0
    at = {s: [] for s in scales}
    huge_r = []

    def pgd(xs, ys, e, steps):
        nonlocal spent
        out = []
        for i in range(0, len(xs), batch_size):
            r, _, f = early_stop_pgd(model, xs[i:i + batch_size], ys[i:i + batch_size], e, norm, steps,
                                     e / 4 if steps <= 20 else e / 10)
            out.append(r)
            spent += 2 * f  # a forward and a backward image per point-step
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=dev)

    n = 0
    while n < len(y):  # the sweep
        if n >= min_points and spent + spent / n * BLOCK > cap / 2:
            break
        xb, yb = x[n:n + BLOCK], y[n:n + BLOCK]
        for s in scales:
            at[s].append(pgd(xb, yb, s * eps, 20))
        huge_r.append(pgd(xb, yb, huge, 100))
        n += len(yb)
        if phase is not None:
            phase.advance(len(yb))
    base_all = torch.cat(at[1.0])
    robust_pos = base_all.nonzero().flatten()
    # the convergence check on the first k sweep points: one restart's most must fit what is left
    afford = n if budget is None else int((cap - spent) // (2 * 101))  # robust points one restart can cover
    k = n if afford >= len(robust_pos) else (int(robust_pos[afford]) if afford > 0 else 0)
    strong = base_all[:k].clone()
    restarts = 0
    while k and restarts < 5 and strong.any():
        alive = strong.nonzero().flatten()
        if restarts and spent + 2 * 101 * len(alive) > cap:
            break
        strong[alive] = pgd(x[alive], y[alive], eps, 100)
        restarts += 1
    curve = {s * eps: torch.cat(at[s]).float().mean().item() for s in scales}
    at_huge = torch.cat(huge_r).float().mean().item()
    base = base_all[:k].float().mean().item() if k else None
    stronger = strong.float().mean().item() if k else None
    out = {"curve": {f"{v:.6g}": a for v, a in curve.items()}, "large_eps": huge, "at_large_eps": at_huge, "n": n,
           "pgd20": base, "pgd100x5": stronger, "n_convergence": k, "restarts": restarts, "passes": spent,
           "budget_passes": None if budget is None else int(cap), "early_stop": True}
    flags = []
    vals = [curve[s * eps] for s in scales]
    if any(b > a + 1 / n for a, b in zip(vals, vals[1:])):
        flags.append(_flag("not_monotone_in_eps", "PGD accuracy rises with a larger budget", curve=out["curve"]))
    if at_huge > 0.01:
        flags.append(_flag("not_zero_at_large_eps", f"{at_huge:.1%} of points survive a budget of {huge:.3g}, "
                           "which can reach any image", accuracy=at_huge, eps=huge))
    if k:
        lo, _ = wilson(round(base * k), k)
        if stronger < lo:
            flags.append(_flag("more_steps_lower_accuracy", f"{restarts} PGD-100 restart(s) lower PGD-20 accuracy "
                               "beyond its interval: the attacks had not converged", pgd20=base, pgd100x5=stronger,
                               n=k))
    out["flags"] = flags
    return out


def invariants(r) -> None:
    """What must hold of any result before it is stored or printed (docs/guarantees.md): one
    outcome per point everywhere, robust only where clean-correct, no point both robust and not
    evaluated, every accuracy equal to its per-point count, robust <= clean, and the worst case
    the AND of the attacks.  A violation is an error, never a row."""
    from ..errors import KdbenchError

    def bad(what):
        raise KdbenchError(f"internal check failed, nothing stored: {what}")

    n, ps = r.n, r.per_sample
    correct = ps.correct_clean
    if n <= 0 or correct is None or len(correct) != n or (ps.labels is not None and len(ps.labels) != n):
        bad(f"{n} points but {len(correct or [])} clean outcomes")
    if not math.isclose(r.clean_accuracy, sum(correct) / n, abs_tol=1e-9):
        bad(f"clean accuracy {r.clean_accuracy} is not {sum(correct)}/{n}")
    worst = list(correct)
    for k, a in r.attacks.items():
        flags = ps.robust.get(k)
        if flags is None or len(flags) != n:
            bad(f"attack {k} has {len(flags or [])} outcomes for {n} points")
        if any(f and not c for f, c in zip(flags, correct)):
            bad(f"attack {k} counts a point robust that the model misclassifies clean")
        nev = (ps.not_evaluated or {}).get(k) or []
        if any(flags[i] for i in nev) or len(nev) != (a.not_evaluated or 0):
            bad(f"attack {k}: points not evaluated are counted robust, or miscounted")
        if not math.isclose(a.robust_accuracy, sum(flags) / n, abs_tol=1e-9):
            bad(f"attack {k}: robust accuracy {a.robust_accuracy} is not {sum(flags)}/{n}")
        if a.robust_accuracy > r.clean_accuracy + 1e-9:
            bad(f"attack {k}: robust accuracy above clean accuracy")
        worst = [w and f for w, f in zip(worst, flags)]
    if r.attacks and not math.isclose(r.worst_case.robust_accuracy, sum(worst) / n, abs_tol=1e-9):
        bad(f"worst case {r.worst_case.robust_accuracy} is not the AND of the attacks ({sum(worst)}/{n})")
