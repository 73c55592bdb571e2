"""Reference AutoAttack adapter (``pyautoattack``): one ``AutoAttack`` object per call, seeded,
with ``attacks_to_run`` narrowed to one component when asked (configured exactly as in the
standard version) and the targeted components' target count capped by the class count."""
from __future__ import annotations

from typing import List, Optional


def autoattack_run(attacks: Optional[List[str]], eps, norm, seed, version="standard", num_classes=10,
                   n_queries: Optional[int] = None):
    def run(model, x, y):
        from pyautoattack import AutoAttack

        aa = AutoAttack(model, device=x.device, eps=eps, norm=norm, seed=seed, version=version)
        if attacks is not None:
            aa.attacks_to_run = list(attacks)  # the component exactly as in the standard version
        n_target = max(1, min(9, num_classes - 1))
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_target)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_target)
        if n_queries is not None:
            aa.square.n_queries = n_queries
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=run.batch_size)
        return x_adv

    run.batch_size = 500  # evaluate() sets its own batch size
    return run


def fab_minimal_run(norm: str, seed: int, n_iter: int = 100):
    """FAB as a minimal-norm attack: ``FABAttack_PT`` untargeted with one restart and eps = inf,
    so ``perturb`` returns FAB's smallest adversarial example for every point it fooled (with a
    finite eps it keeps only those within eps; more restarts would then attack no point)."""
    def run(model, x, y):
        from pyautoattack.fab_pt import FABAttack_PT

        return FABAttack_PT(model, n_restarts=1, n_iter=n_iter, eps=float("inf"), norm=norm, seed=seed,
                            device=x.device).perturb(x, y)

    return run
