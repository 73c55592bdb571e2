"""Robustness evaluation through torchattacks, ART and the reference AutoAttack."""
from .pipeline import evaluate  # noqa: F401
from .result import EvalResult  # noqa: F401
