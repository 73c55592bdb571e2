"""Accuracy statistics: Wilson intervals, W-Robust, per-class robust accuracy."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def w_robust(clean: float, robust: float) -> float:
    """W-Robust = (clean + robust) / 2 (DARHT, seed 001)."""
    return (clean + robust) / 2


def per_class(flags: Sequence[bool], labels: Sequence[int], num_classes: int) -> Dict[str, float]:
    tot = [0] * num_classes
    ok = [0] * num_classes
    for f, y in zip(flags, labels):
        tot[y] += 1
        ok[y] += bool(f)
    return {str(c): ok[c] / tot[c] for c in range(num_classes) if tot[c]}


def summary(flags: List[bool], labels: List[int], num_classes: int, clean: float) -> dict:
    n = len(flags)
    k = sum(flags)
    acc = k / n if n else 0.0
    pc = per_class(flags, labels, num_classes)
    worst = min(pc.items(), key=lambda kv: kv[1]) if pc else (None, None)
    return {"robust_accuracy": acc, "ci95": list(wilson(k, n)), "w_robust": w_robust(clean, acc),
            "per_class": pc, "worst_class": {"class": worst[0], "robust_accuracy": worst[1]}}


def min_perturbation(distances, correct, norm: str) -> dict:
    """rho_adv (seed 000, Eq. 12-13) from per-sample minimal distances: mean, median and max
    over the clean-correct points the attack fooled, and its success rate over clean-correct
    points (clean-misclassified points have distance 0 and are not counted)."""
    import torch

    d = distances[correct]
    ok = torch.isfinite(d)
    found = d[ok]
    return {"norm": norm, "n_attacked": int(correct.sum()), "success_rate": float(ok.float().mean()) if len(d) else 0.0,
            "mean": float(found.mean()) if len(found) else None,
            "median": float(found.median()) if len(found) else None,
            "max": float(found.max()) if len(found) else None}


def robust_accuracy_at(min_distance: Sequence[float], eps: float) -> float:
    """Robust accuracy at budget ``eps`` derived from per-sample minimal distances: the share
    of points whose minimal adversarial distance exceeds eps (clean errors have distance 0)."""
    n = len(min_distance)
    return sum(1 for d in min_distance if d > eps) / n if n else 0.0
