"""``kdbench check``: the CI regression gate on robust accuracy.

    kdbench check RESULT.json --baseline BASELINE.json|LEADERBOARD.csv [--metric NAME] [--tolerance auto|X]

Exit 0: no regression; 1: a regression; 2: bad input.  The metric is ``worst_case`` (default),
``clean`` or an attack name in the result (``pgd``, ``autoattack``, ...).

* ``--tolerance X`` (an accuracy fraction, ``0.02``, or a percentage, ``2%``): a regression is a
  drop of more than X.
* ``--tolerance auto`` (default): a one-sided test at ``--alpha`` (0.01).  When both sides hold
  per-sample outcomes on the same points (same labels and subset, or the shared test-set
  indices of two subsets), the exact McNemar test on the discordant points (robust before but
  not now vs the reverse); otherwise a two-proportion z-test.  So a re-evaluation with another
  attack seed, or a retrained model whose accuracy moves within noise, passes, and a real drop
  fails.
* A validity flag that fires in the result but not in the baseline is a regression too.
* ``--two-sided``: a significant change either way fails (a reproduction check).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Tuple

from .attacks.registry import entry_of
from .errors import KdbenchError
from .evaluation.result import EvalResult

def leaderboard_column(metric: str) -> Optional[str]:
    """The leaderboard CSV column of a metric (attacks: their registry entry's ``column``)."""
    if metric in ("worst_case", "clean"):
        return metric
    e = entry_of(metric)
    return e.column if e is not None and metric == e.name else None


def _load_json(path) -> EvalResult:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise KdbenchError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise KdbenchError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise KdbenchError(f"{path}: not JSON (not UTF-8 text)") from None
    if not isinstance(data, dict) or "clean_accuracy" not in data or "attacks" not in data:
        raise KdbenchError(f"{path}: not a kdbench result JSON (kdbench evaluate --out)")
    try:
        return EvalResult.from_dict(data)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise KdbenchError(f"{path}: not a kdbench result JSON ({type(e).__name__}: {str(e)[:80]})") from None


def metric_of(result, metric: str) -> Tuple[float, int, Optional[List[bool]]]:
    """(accuracy, n, per-sample outcomes or None) of ``metric`` in a result."""
    result = EvalResult.coerce(result)
    n = result.n
    if metric == "clean":
        return result.clean_accuracy, n, result.per_sample.correct_clean
    if metric == "worst_case":
        return result.worst_case.robust_accuracy, n, result.worst_case_flags()
    if metric not in result.attacks:
        raise KdbenchError(f"metric {metric!r} is not in the result; it has clean, worst_case, "
                           f"{', '.join(result.attacks)}")
    return result.attacks[metric].robust_accuracy, n, result.per_sample.robust.get(metric)


def _same_points(a: EvalResult, b: EvalResult) -> bool:
    ha, hb = a.provenance.dataset.points_hash, b.provenance.dataset.points_hash
    return ha is not None and ha == hb and a.n == b.n and a.per_sample.labels == b.per_sample.labels


def paired_outcomes(base, result, flags0, flags1):
    """Per-sample outcomes of both results on the points they share, or None: the same points
    (same subset hash and labels), or -- when both record their test-set indices -- the
    intersection of their subsets (e.g. a CI re-evaluation of 200 of a board's 1 000 points)."""
    if flags0 is None or flags1 is None:
        return None
    base, result = EvalResult.coerce(base), EvalResult.coerce(result)
    if _same_points(base, result):
        return list(flags0), list(flags1), len(flags0)
    i0, i1 = base.per_sample.index, result.per_sample.index
    d0, d1 = base.provenance.dataset.name, result.provenance.dataset.name
    if not i0 or not i1 or d0 != d1:
        return None
    pos0 = {i: k for k, i in enumerate(i0)}
    common = [(pos0[i], k) for k, i in enumerate(i1) if i in pos0]
    if not common:
        return None
    return [flags0[a] for a, _ in common], [flags1[b] for _, b in common], len(common)


def mcnemar_worse(base: List[bool], new: List[bool]) -> Tuple[float, int, int]:
    """One-sided exact McNemar p-value that ``new`` is worse: b = robust before but not now,
    c = the reverse; p = P(Binomial(b + c, 1/2) >= b)."""
    b = sum(1 for x, y in zip(base, new) if x and not y)
    c = sum(1 for x, y in zip(base, new) if y and not x)
    m = b + c
    if m == 0:
        return 1.0, b, c
    from scipy import stats

    return float(stats.binom.sf(b - 1, m, 0.5)), b, c


def two_proportion_worse(k0: int, n0: int, k1: int, n1: int) -> float:
    """One-sided pooled two-proportion z-test p-value that proportion 1 is below proportion 0."""
    p = (k0 + k1) / (n0 + n1)
    se = math.sqrt(p * (1 - p) * (1 / n0 + 1 / n1))
    if se == 0:
        return 1.0 if k1 / n1 >= k0 / n0 else 0.0
    z = (k1 / n1 - k0 / n0) / se
    return 0.5 * math.erfc(-z / math.sqrt(2))  # P(Z <= z)


def parse_tolerance(text: str) -> Optional[float]:
    if text == "auto":
        return None
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise KdbenchError(f"--tolerance must be auto, a fraction (0.02) or a percentage (2%), got {text!r}") from None
    if not 0 <= v < 1:
        raise KdbenchError(f"--tolerance must lie in [0, 1), got {text!r}")
    return v


def _baseline_row(rows: List[dict], result: EvalResult, row: Optional[str]) -> dict:
    if row:
        hit = [r for r in rows if r["name"] == row]
        if not hit:
            raise KdbenchError(f"leaderboard has no row {row!r}; rows: {', '.join(r['name'] for r in rows)}")
        return hit[0]
    sha = result.provenance.model.weights_sha256 if result.provenance.model else None
    hit = [r for r in rows if sha and r.get("sha256") == sha]
    if not hit:
        from .leaderboard import row_name

        hit = [r for r in rows if r["name"] == row_name(result)]
    if not hit:
        raise KdbenchError("no leaderboard row matches the result's checkpoint (sha256) or run name; pass --row NAME")
    return hit[0]


def check(result_path, baseline_path, metric: str = "worst_case", tolerance: str = "auto", alpha: float = 0.01,
          row: Optional[str] = None, two_sided: bool = False, allow_mismatch: bool = False) -> Tuple[bool, str]:
    """Returns (regressed, markdown summary).  ``two_sided`` also fails on a significant *rise*
    (a reproduction check: an attack that got weaker raises robust accuracy).  Results of
    another dataset, threat model, eps or test split are refused unless ``allow_mismatch``."""
    tol = parse_tolerance(tolerance)
    result = _load_json(result_path)
    acc1, n1, flags1 = metric_of(result, metric)
    new_flags = result.validity.names
    bpath = Path(baseline_path)
    if bpath.suffix.lower() == ".csv":
        from .leaderboard import read_csv

        brow = _baseline_row(read_csv(bpath), result, row)
        col = leaderboard_column(metric)
        if col is None or brow.get(col) in (None, ""):
            raise KdbenchError(f"the leaderboard row {brow['name']!r} has no {metric!r} column value")
        mismatch = _mismatch({"dataset": brow.get("dataset"), "norm": brow.get("threat"), "eps": float(brow["eps"]),
                              "split": brow.get("split") or "test"}, _facts(result))
        if mismatch and not allow_mismatch:
            raise KdbenchError(f"row {brow['name']!r}: {mismatch}")
        acc0, n0, flags0 = float(brow[col]), int(float(brow["n"])), None
        old_flags = {f for f in (brow.get("flags") or "").split(";") if f}
        where = f"{bpath} row {brow['name']!r}"
        paired = None
    else:
        base = _load_json(bpath)
        acc0, n0, flags0 = metric_of(base, metric)
        old_flags = base.validity.names
        where = str(bpath)
        paired = paired_outcomes(base, result, flags0, flags1)
        mismatch = _mismatch(_facts(base), _facts(result))
        if mismatch and not allow_mismatch:
            raise KdbenchError(mismatch)
    lines = ["## kdbench check", "", f"baseline: {where}", f"result: {result_path}", "",
             "| metric | baseline | result | change | test | verdict |", "|---|---|---|---|---|---|"]
    sides = "two-sided" if two_sided else "one-sided"
    if tol is not None:
        regressed = (abs(acc1 - acc0) if two_sided else acc0 - acc1) > tol
        test = f"tolerance {tol:.4g} ({sides})"
    elif paired is not None:
        f0, f1, common = paired
        p, b, c = mcnemar_worse(f0, f1)
        if two_sided:
            p = min(1.0, 2 * min(p, mcnemar_worse(f1, f0)[0]))
        regressed = p < alpha
        on = "" if common == n1 == n0 else f" on the {common} shared points"
        test = f"paired McNemar{on}: {b} lost, {c} gained, {sides} p = {p:.3g} (alpha {alpha:g})"
    else:
        k0, k1 = round(acc0 * n0), round(acc1 * n1)
        p = two_proportion_worse(k0, n0, k1, n1)
        if two_sided:
            p = min(1.0, 2 * min(p, two_proportion_worse(k1, n1, k0, n0)))
        regressed = p < alpha
        test = f"two-proportion z: {sides} p = {p:.3g} (alpha {alpha:g}; n {n0} vs {n1})"
    verdict = "**regression**" if regressed else "ok"
    lines.append(f"| {metric} | {100 * acc0:.2f} % | {100 * acc1:.2f} % | {100 * (acc1 - acc0):+.2f} pp | {test} | "
                 f"{verdict} |")
    fired = sorted(new_flags - old_flags)
    if fired:
        regressed = True
        lines += ["", f"**new validity flags**: {', '.join(fired)} (not in the baseline): regression"]
    lines += ["", "result: **REGRESSION**" if regressed else "result: no regression"]
    return regressed, "\n".join(lines)


def _facts(r: EvalResult) -> dict:
    d = r.provenance.dataset
    return {"dataset": d.name, "norm": r.config.norm, "eps": r.config.eps, "split": d.split or "test"}


def _mismatch(base: dict, new: dict) -> Optional[str]:
    """What makes two results incomparable: dataset, threat model, eps, test split."""
    for k in ("dataset", "norm", "eps", "split"):
        a, b = base[k], new[k]
        same = math.isclose(a, b, rel_tol=1e-6) if k == "eps" else a == b
        if not same:
            return (f"baseline and result differ in {k} ({a} vs {b}): not comparable (--allow-mismatch compares "
                    "them anyway)")
    return None
