"""Robustness evaluation through torchattacks, ART and the reference AutoAttack."""
from .attacks import SUITES, build_attack, parse_spec  # noqa: F401
from .core import EvalResult, evaluate  # noqa: F401
