"""Gradient sensitivity, confidence and validity checks (seed 000 III-B and V-D; Carlini et al.
2019, "On Evaluating Adversarial Robustness"; AutoAttack's own checks).  A flag is
``{"name", "evidence": {...}, "message"}``; kdbench never reports masking as robustness silently."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..attacks.registry import entries, entry_of



def probe_gradients(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev) -> Dict[str, list]:
    """Per sample: mean |d F_c / d x| (F = softmax of the logits, c the predicted class; Eq. 10
    at T = 1), the largest |d CE / d x|, the confidence (Eq. 14: top probability when correct,
    else 0), and whether the outputs look like probabilities."""
    sens, ce_grad, conf = [], [], []
    probs_like = True
    for s in range(0, len(y), batch_size):
        xb = x[s:s + batch_size].to(dev).requires_grad_(True)
        yb = y[s:s + batch_size].to(dev)
        with torch.enable_grad():
            z = model(xb)
            p = F.softmax(z, 1)
            top, pred = p.max(1)
            g_s, = torch.autograd.grad(top.sum(), xb, retain_graph=True)
            g_ce, = torch.autograd.grad(F.cross_entropy(z, yb, reduction="sum"), xb)
        zd = z.detach()
        probs_like &= bool((zd >= 0).all() and (zd <= 1).all() and torch.allclose(zd.sum(1), torch.ones_like(zd[:, 0]),
                                                                                   atol=1e-3))
        sens += g_s.abs().flatten(1).mean(1).tolist()
        ce_grad += g_ce.abs().flatten(1).max(1).values.tolist()
        conf += torch.where(pred == yb, top.detach(), torch.zeros_like(top)).tolist()
    return {"sensitivity": sens, "ce_grad_max": ce_grad, "confidence": conf, "probabilities": probs_like}


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


def budget_checks(model, x, y, eps: float, norm: str, seed: int, dev, batch_size: int) -> dict:
    """Carlini et al. (2019) items 3-6 on a subset: PGD accuracy must fall as eps grows, reach
    about zero at a budget that can turn any image into any other, and not drop beyond its
    interval with 5x the steps and 5 restarts."""
    import torchattacks

    from .metrics import wilson

    torch.manual_seed(seed)
    x, y = x.to(dev), y.to(dev)

    def acc_under(e, steps=20, restarts=1):
        if norm == "Linf":
            atk = torchattacks.PGD(model, eps=e, alpha=e / 4 if steps <= 20 else e / 10, steps=steps,
                                   random_start=True)
        else:
            atk = torchattacks.PGDL2(model, eps=e, alpha=e / 4 if steps <= 20 else e / 10, steps=steps)
        robust = torch.ones(len(y), dtype=torch.bool, device=dev)
        for _ in range(restarts):  # each restart attacks only the points every earlier one missed
            todo = robust.nonzero().flatten()
            for s in range(0, len(todo), batch_size):
                sel = todo[s:s + batch_size]
                xa = atk(x[sel], y[sel])
                with torch.no_grad():
                    robust[sel] &= model(xa).argmax(1) == y[sel]
        return robust.float().mean().item()

    scales = [0.5, 1.0, 2.0, 4.0]
    curve = {s * eps: acc_under(s * eps) for s in scales}
    huge = 1.0 if norm == "Linf" else math.sqrt(x[0].numel())
    at_huge = acc_under(huge, steps=100)
    base = curve[eps]
    stronger = acc_under(eps, steps=100, restarts=5)
    n = len(y)
    out = {"curve": {f"{k:.6g}": v for k, v in curve.items()}, "large_eps": huge, "at_large_eps": at_huge,
           "pgd100x5": stronger, "n": n}
    flags = []
    vals = [curve[s * eps] for s in scales]
    if any(b > a + 1 / n for a, b in zip(vals, vals[1:])):
        flags.append(_flag("not_monotone_in_eps", "PGD accuracy rises with a larger budget", curve=out["curve"]))
    if at_huge > 0.01:
        flags.append(_flag("not_zero_at_large_eps", f"{at_huge:.1%} of points survive a budget of {huge:.3g}, "
                           "which can reach any image", accuracy=at_huge, eps=huge))
    lo, _ = wilson(round(base * n), n)
    if stronger < lo:
        flags.append(_flag("more_steps_lower_accuracy", "5x the steps and 5 restarts lower PGD accuracy beyond "
                           "its interval: the attacks had not converged", pgd20=base, pgd100x5=stronger))
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
