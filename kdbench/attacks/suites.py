"""Attack suites: named lists of specs (``--suite``)."""
from __future__ import annotations

from typing import List

from ..errors import KdbenchError

SUITES = {
    # AutoAttack-grade verdicts for about a tenth of its passes, with a measured safety net
    # (attacks/fast.py; docs/evaluate.md, "The fast suite"): for iteration and CI gates
    "fast": ["fast"],
    "quick": ["fgsm", "pgd", "cw-linf", "apgd-ce", "apgd-t"],
    # square before autoattack: AutoAttack then reuses Square's run (and APGD-CE's, APGD-T's) per point
    "standard": ["fgsm", "pgd", "cw-linf", "apgd-ce", "apgd-t", "square", "autoattack"],
    # the seed papers' protocol: FGSM, PGD-20 (step eps/4 = 2/255 at 8/255), CW-inf 20 steps, AutoAttack,
    # and seed 000's rho_adv: the min-* ensembles (the strongest minimal-norm attacks) and, under their
    # names, the paper's CW-L0 / L2 / L-inf
    "paper": ["fgsm", "pgd:steps=20", "cw-linf:steps=20", "autoattack", "min-l0", "min-l2", "min-linf", "cw-l0",
              "cw-l2", "cw-linf-min"],
}


def suite(name: str) -> List[str]:
    if name not in SUITES:
        raise KdbenchError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return list(SUITES[name])
