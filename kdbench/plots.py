"""Plots from result JSONs (matplotlib, PNG): ``kdbench plot RESULT.json ... --out DIR``.

* ``robust_vs_eps.png`` -- PGD robust accuracy against eps (the validity budget sweep), one line
  per result;
* ``min_distance_<attack>.png`` -- the distribution of minimal adversarial distances;
* ``temperature.png`` (when results carry ``--label T=...``) -- accuracy, sensitivity and
  rho_adv against the distillation temperature (seed 000, Figs. 3-5, 7-8).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import KdbenchError
from .evaluation.result import EvalResult


@dataclass
class _Plotted:
    result: EvalResult
    path: str
    label: Optional[str] = None


def _load(paths) -> List[_Plotted]:
    out = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise KdbenchError(f"{p}: not a readable result JSON ({type(e).__name__})") from None
        if not isinstance(r, dict) or "clean_accuracy" not in r:
            raise KdbenchError(f"{p}: not a kdbench result (no clean_accuracy)")
        try:
            out.append(_Plotted(EvalResult.from_dict(r), str(p)))
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise KdbenchError(f"{p}: not a kdbench result ({type(e).__name__}: {str(e)[:80]})") from None
    return out


def _label(r: _Plotted) -> str:
    return r.label or Path(r.path).stem


def plot(paths, out_dir, labels=None) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _load(paths)
    for r, lab in zip(results, labels or []):
        r.label = lab
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    curves = [(r, r.result.validity.budget_checks) for r in results]
    curves = [(r, c) for r, c in curves if c]
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r, c in curves:
            xs = sorted(c["curve"], key=float)
            ax.plot([float(v) for v in xs], [c["curve"][v] for v in xs], marker="o", label=_label(r))
        ax.set_xlabel(f"eps ({results[0].result.config.norm})")
        ax.set_ylabel("PGD-20 robust accuracy (clean-correct subset)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "robust_vs_eps.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    names = sorted({k for r in results for k in (r.result.min_perturbation or {})})
    for name in names:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in results:
            d = (r.result.per_sample.min_distance or {}).get(name)
            if d:
                finite = [v for v, c in zip(d, r.result.per_sample.correct_clean) if c and math.isfinite(v)]
                ax.hist(finite, bins=30, alpha=0.5, label=_label(r))
        ax.set_xlabel(f"minimal distance ({name})")
        ax.set_ylabel("points")
        ax.legend(fontsize=7)
        fig.tight_layout()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        written.append(out / f"min_distance_{safe}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    temps = [(r, _temperature(r)) for r in results]
    temps = [(r, t) for r, t in temps if t is not None]
    if temps:
        written.append(temperature_plot(temps, out / "temperature.png", plt))
    if not written:
        raise KdbenchError("nothing to plot: the results have no budget sweep, distances or temperatures")
    return written


def _temperature(r: _Plotted):
    m = re.search(r"T=([0-9.]+)", _label(r))
    return float(m.group(1)) if m else None


def temperature_plot(temps, path, plt) -> Path:
    """Accuracy, sensitivity (fraction of gradients < 1e-10) and rho_adv against T; one line
    per series (the label before 'T=')."""
    series: Dict[str, list] = {}
    for r, t in temps:
        series.setdefault(_label(r).split("T=")[0].strip(" -_") or "model", []).append((t, r))
    mp_names = sorted({k for r, _ in temps for k in (r.result.min_perturbation or {})})
    cols = 2 + len(mp_names)
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3))
    for name, pts in series.items():
        pts.sort(key=lambda p: p[0])
        ts = [p[0] for p in pts]
        axes[0].plot(ts, [p[1].result.clean_accuracy for p in pts], marker="o", label=name)
        axes[1].plot(ts, [p[1].result.sensitivity.fraction_below_1e10 for p in pts], marker="o", label=name)
        for i, mp in enumerate(mp_names):
            found = [(p[1].result.min_perturbation or {}).get(mp) for p in pts]
            axes[2 + i].plot(ts, [f.mean if f is not None else None for f in found], marker="o", label=name)
    axes[0].set_title("accuracy")
    axes[1].set_title("fraction of |grad| < 1e-10")
    for i, mp in enumerate(mp_names):
        axes[2 + i].set_title(f"rho_adv ({mp})")
    for ax in axes:
        ax.set_xlabel("temperature T")
        ax.set_xscale("symlog")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
