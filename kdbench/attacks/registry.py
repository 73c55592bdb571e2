"""The attack registry: one entry per attack, built-ins registered exactly as user attacks are.

A spec is ``NAME[@BACKEND][:key=value,...]`` (``pgd``, ``pgd:steps=50``, ``pgd@art``,
``autoattack:version=plus``).  :func:`register_attack` records an :class:`AttackEntry` (its
norms, backends -- the first is the default --, defaults read from the factory's signature, and
the flags that validity checks, leaderboards and ``kdbench check`` read), and
:func:`build_attack` turns a spec into a resolved :class:`Attack` with a
``run(model, x, y) -> x_adv`` call (torchattacks' ``Attack(model)(x, y)``) and every parameter it
runs with recorded.  kdbench re-checks every returned x' itself (prediction, [0, 1] box, budget).

Adding an attack: one function with ``@register_attack`` in a plugin module (docs/guide.md) or in
a file of this package (docs/architecture.md).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..config import number
from ..errors import KdbenchError
from ..registry import Registry

# what every factory is given besides its own parameters
_BUDGET_ARGS = ("eps", "norm", "seed", "num_classes", "backend")


@dataclass
class Attack:
    """A resolved attack: ``run(model, x, y) -> x_adv`` with every library parameter recorded."""

    key: str  # the spec as the user wrote it (the name in results)
    name: str
    backend: str
    params: Dict[str, Any]
    run: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    norm: str = "Linf"
    eps: float = 0.0
    library_batches: bool = False  # the library batches internally (pyautoattack)
    min_norm: Optional[str] = None  # minimal-perturbation attacks: the norm their distance is measured in
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    """What a built-in factory returns: the call and the parameters it records in results."""

    run: Callable
    params: Dict[str, Any]
    library_batches: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackEntry:
    """An attack in the registry, with the flags the rest of kdbench reads."""

    name: str
    factory: Callable
    norms: Tuple[str, ...] = ("Linf", "L2")
    backends: Tuple[str, ...] = ("user",)  # the first is the default
    defaults: Dict[str, Any] = field(default_factory=dict)
    builtin: bool = False
    white_box: bool = False  # uses the model's gradients (validity: black_box_beats_white_box)
    min_norm: Optional[str] = None  # a minimal-perturbation attack: its distance norm (rho_adv)
    column: Optional[str] = None  # its leaderboard column (and `kdbench check --metric NAME` on a CSV)
    margin_of: Optional[str] = None  # the margin-loss twin of this CE attack (validity: ce_weaker_than_margin)
    single_step: bool = False  # validity: single_step_beats_iterative
    iterative_ce: bool = False  # an iterative cross-entropy attack (the same check)
    min_classes: int = 1  # e.g. targeted DLR needs 4 classes (with the autoattack backend)
    # a backend taking other parameters: its own {name: default}, or the names of the signature's it takes
    backend_defaults: Dict[str, Any] = field(default_factory=dict)

    @property
    def default_backend(self) -> str:
        return self.backends[0]


ATTACKS = Registry("attack")


def _signature_defaults(factory) -> Dict[str, Any]:
    out = {}
    for p in inspect.signature(factory).parameters.values():
        if p.name in _BUDGET_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = None if p.default is p.empty else p.default
    return out


def register_attack(name: str, norms=("Linf", "L2"), defaults: Optional[Dict[str, Any]] = None, *,
                    backends: Tuple[str, ...] = ("user",), builtin: bool = False, **flags):
    """Register an attack under ``name`` (usable in specs and suites like the built-ins)::

        @register_attack("noise", defaults={"tries": 10})
        def noise(eps, norm, seed, num_classes, tries):
            def run(model, x, y):       # -> adversarial images, float in [0, 1]
                ...
            return run

    The factory receives the budget, norm, seed, class count and the spec's parameters (merged
    over ``defaults``, or over its own keyword defaults when ``defaults`` is not given; unknown
    keys are refused); kdbench re-checks every returned example (misclassified, in [0, 1], within
    the budget) as for the library attacks.  ``flags`` are :class:`AttackEntry` fields."""
    def deco(factory):
        if name.lower() in ATTACKS:
            existing = ATTACKS.get(name)
            raise ValueError(f"attack {name!r} is {'built in' if existing.builtin else 'registered twice'}")
        flags.setdefault("white_box", builtin)  # a user attack is not assumed to use gradients
        entry = AttackEntry(name.lower(), factory, tuple(norms), tuple(backends),
                            dict(defaults) if defaults is not None else _signature_defaults(factory),
                            builtin=builtin, **flags)
        ATTACKS.register(name)(entry)
        return factory

    return deco


def _num(v: str):
    v = v.strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if "/" in v:
        return number(v)
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def parse_spec(spec: str):
    head, _, rest = spec.partition(":")
    name, _, backend = head.partition("@")
    kwargs = {}
    if rest:
        for item in rest.split(","):
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise KdbenchError(f"attack spec {spec!r}: expected key=value, got {item!r}")
            kwargs[k.strip()] = _num(v)
    return name.strip().lower(), (backend.strip().lower() or None), kwargs


def _merge(given: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(given) - set(defaults)
    if unknown:
        raise KdbenchError(f"unknown attack parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


# Parameters that make an attack a no-op when out of range: an attack that did not attack is not
# robustness (docs/guarantees.md).  Counts must be integers >= their minimum; sizes finite and > 0.
_COUNTS = {"steps": 1, "n_restarts": 1, "n_queries": 1, "binary_steps": 1, "max_rounds": 0, "n_iter": 1,
           "binary_search_steps": 1, "patience": 0, "abort_every": 0}
_POSITIVE = ("step_size", "lr", "c0", "c_max", "c", "p_init", "max_stepsize", "gamma", "init_epsilon")
_NONNEGATIVE = ("kappa", "decay", "overshoot")


def validate_params(name: str, p: Dict[str, Any]) -> None:
    """Refuse step counts below 1 and step sizes that are not finite and positive."""
    for k, v in p.items():
        if k in _COUNTS and v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < _COUNTS[k]:
                raise KdbenchError(f"attack {name}: {k} must be an integer >= {_COUNTS[k]}, got {v!r}")
        elif (k in _POSITIVE or k in _NONNEGATIVE) and v is not None:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= 0 if k in _POSITIVE else v < 0):
                sign = "positive" if k in _POSITIVE else "non-negative"
                raise KdbenchError(f"attack {name}: {k} must be a finite {sign} number, got {v!r}")
    if "p_init" in p and isinstance(p["p_init"], (int, float)) and p["p_init"] > 1:
        raise KdbenchError(f"attack {name}: p_init must lie in (0, 1], got {p['p_init']!r}")


def entry_of(spec: str) -> Optional[AttackEntry]:
    """The entry a spec (or a result's attack key) names, or None for an unknown name."""
    return ATTACKS.find(spec.partition("@")[0].partition(":")[0].strip())


def _backend_defaults(e: AttackEntry, backend: str) -> Dict[str, Any]:
    own = e.backend_defaults.get(backend)
    if own is None:
        return e.defaults
    return own if isinstance(own, dict) else {k: e.defaults[k] for k in own}


def build_attack(spec: str, eps: float, norm: str = "Linf", seed: int = 0, num_classes: int = 10) -> Attack:
    name, backend, kw = parse_spec(spec)
    if name not in ATTACKS:
        known = ", ".join(e.name for e in ATTACKS.values())
        raise KdbenchError(f"unknown attack {name!r} in {spec!r}; known: {known}")
    e = ATTACKS.get(name)
    if not e.builtin:
        if backend not in (None, "user"):
            raise KdbenchError(f"attack {name!r} is a user attack; it has no backend {backend!r}")
        if norm not in e.norms:
            raise KdbenchError(f"attack {name!r} supports {', '.join(e.norms)}, not {norm}")
        p = _merge(kw, e.defaults)
        validate_params(name, p)
        return Attack(spec, name, "user", {"eps": eps, **p},
                      e.factory(eps=eps, norm=norm, seed=seed, num_classes=num_classes, **p), norm=norm, eps=eps)
    b = backend or e.default_backend
    if b not in e.backends:
        raise KdbenchError(f"attack {name!r} has no backend {b!r}; available: {', '.join(e.backends)}")
    if norm not in e.norms:
        raise KdbenchError(f"attack {name!r} is L-inf only; use --norm Linf")
    if num_classes < e.min_classes and b == "autoattack":
        raise KdbenchError(f"{name} uses the targeted DLR loss, which needs at least {e.min_classes} classes "
                           f"(model has {num_classes}); use apgd-ce, pgd or cw-linf")
    p = _merge(kw, _backend_defaults(e, b))
    validate_params(name, p)
    built: Built = e.factory(eps=eps, norm=norm, seed=seed, num_classes=num_classes, backend=b, **p)
    return Attack(spec, name, b, built.params, built.run, norm=norm, eps=eps, library_batches=built.library_batches,
                  min_norm=e.min_norm, extra=built.extra)


def entries() -> List[AttackEntry]:
    """Every registered attack, in registration order (the built-ins first: kdbench.attacks
    imports their families before anything can use this registry)."""
    return ATTACKS.values()


def within_budget(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Per-sample check ||delta|| <= eps (with a float tolerance)."""
    flat = delta.flatten(1)
    n = flat.abs().max(1).values if norm == "Linf" else flat.norm(dim=1)
    return n <= eps * (1 + 1e-5) + 1e-7
