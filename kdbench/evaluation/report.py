"""The terminal report of an evaluation (``kdbench evaluate``): rich tables read from an
:class:`~kdbench.evaluation.result.EvalResult`'s attributes."""
from __future__ import annotations

from .result import Distillation, EvalResult


def _pct_ci(ci) -> str:
    lo, hi = ci
    return f"[{lo:.1%}, {hi:.1%}]"


def print_table(r: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    r = EvalResult.coerce(r)
    prov, cfg = r.provenance, r.config
    t = Table(title=f"{prov.model.spec if prov.model else None} on {prov.dataset.name} "
                    f"(n={r.n}, {cfg.norm} eps={cfg.eps:.4g})")
    for col in ("attack", "backend", "robust acc", "95% CI", "W-Robust", "worst class", "F / B passes", "time"):
        t.add_column(col, justify="left" if col in ("attack", "backend") else "right")
    t.add_row("clean", "-", f"{r.clean_accuracy:.2%}", _pct_ci(r.clean_ci95), "", "", "", "")
    for name, a in r.attacks.items():
        wc = a.worst_class
        t.add_row(name, a.backend, f"{a.robust_accuracy:.2%}", _pct_ci(a.ci95), f"{a.w_robust:.2%}",
                  f"{wc.cls}: {wc.robust_accuracy:.1%}", f"{a.passes.forward:,} / {a.passes.backward:,}",
                  f"{a.seconds:.1f}s")
    w = r.worst_case
    t.add_row("[bold]worst case[/bold]", "per-sample AND", f"[bold]{w.robust_accuracy:.2%}[/bold]", _pct_ci(w.ci95),
              f"{w.w_robust:.2%}", f"{w.worst_class.cls}: {w.worst_class.robust_accuracy:.1%}", "", "")
    c = Console(width=max(Console().width, 132))
    c.print(t)
    for name, a in r.attacks.items():
        if a.composition:
            parts = [f"{k} (reused)" if v["reused_chunks"] and not v["attacked_points"] else
                     f"{k} (run on {v['attacked_points']} points)" for k, v in a.composition.items()]
            c.print(f"{name}: AutoAttack standard composed per point from {', '.join(parts)}")
        if a.best_of:
            c.print(f"{name}: the per-point minimum over {', '.join(a.best_of)}; the smallest distance came from "
                    + ", ".join(f"{k} on {v} points" for k, v in a.best_of.items()))
    if r.min_perturbation:
        m = Table(title="minimal perturbation (rho_adv, over clean-correct points)")
        for col in ("attack", "norm", "success", "mean", "median", "max"):
            m.add_column(col, justify="left" if col in ("attack", "norm") else "right")
        for name, v in r.min_perturbation.items():
            fmt = (lambda z: "-" if z is None else f"{z:.4g}")
            m.add_row(name, v.norm, f"{v.success_rate:.1%}", fmt(v.mean), fmt(v.median), fmt(v.max))
        c.print(m)
    if r.cost is not None:
        rate = f", {r.cost.points_per_second:.1f} points/s" if r.cost.points_per_second else ""
        gpu = f", {r.cost.gpu_seconds:.0f} GPU-s" if r.cost.gpu_seconds is not None else ""
        c.print(f"cost: {r.cost.passes:,} model passes ({r.cost.forward:,} forward, {r.cost.backward:,} backward), "
                f"{r.cost.seconds:.1f} s in attacks{rate}{gpu}")
    for name, a in r.attacks.items():
        au = (a.stages or {}).get("audit")
        if au:
            bound = (f"; a Square-only breakage rate above {au['rate_bound_95']:.1%} would have shown (95 %)"
                     if au.get("rate_bound_95") is not None else "")
            c.print(f"{name}: Square {'on every survivor' if au['path'] == 'full' else 'audit'} "
                    f"({au['size']} of {au['of']} survivors audited, {au['broken']} broken"
                    f"{'; ' + ', '.join(au['reasons']) if au['reasons'] else ''}){bound}")
    if r.sensitivity is not None:
        c.print(f"sensitivity: mean |dF/dx| {r.sensitivity.mean:.3g}, fraction < 1e-10 "
                f"{r.sensitivity.fraction_below_1e10:.1%}; confidence (Eq. 14) {r.confidence:.3f}")
    if r.validity.flags:
        for f in r.validity.flags:
            c.print(f"[bold red]validity flag[/bold red] {f.name}: {f.message}")
    else:
        c.print("validity flags: none")
    if r.distillation:
        _print_distillation(c, r.distillation)
    if r.store_id is not None:
        c.print(f"stored as result #{r.store_id}")


def _print_distillation(c, d: Distillation) -> None:
    """The distillation metrics (:func:`kdbench.evaluation.distill.distillation_metrics`)."""
    from rich.table import Table

    m = Table(title="distillation metrics (student vs teacher, PGD-20 on the student)")
    for col in ("teacher", "teacher clean", "agree clean", "agree adv", "transfer rate", "transfer-attack acc",
                "CAM cosine"):
        m.add_column(col, justify="left" if col == "teacher" else "right")
    for name, v in d.teachers.items():
        m.add_row(name, f"{v.teacher_clean_accuracy:.1%}", f"{v.agreement.clean:.1%}",
                  f"{v.agreement.adversarial:.1%}", f"{v.transferability.rate:.1%}",
                  f"{v.transfer_attack.robust_accuracy:.1%}", f"{v.cam_similarity.cosine:.3f}")
    c.print(m)
    if d.knn is not None:
        k = d.knn
        c.print(f"k-NN (k={k.k}, {k.reference} training images): clean {k.clean:.1%} "
                f"(softmax {k.softmax_clean:.1%}), PGD-20 {k.pgd:.1%} (softmax {k.softmax_pgd:.1%})")
    if d.tsne is not None:
        c.print(f"t-SNE plot: {d.tsne}")
