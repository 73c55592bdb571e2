"""Attack specs and their library adapters.

A spec is ``NAME[@BACKEND][:key=value,...]``, e.g. ``pgd``, ``pgd:steps=50``, ``pgd@art``,
``autoattack:version=plus``.  Every attack has one default backend (the strongest faithful
implementation) and maybe others:

=============  ===================================  =====================================
name           default backend                      other backends
=============  ===================================  =====================================
fgsm           torchattacks.FGSM                    art (FastGradientMethod)
pgd            torchattacks.PGD / PGDL2 (20 steps)  art (ProjectedGradientDescent)
bim            torchattacks.BIM                     art (BasicIterativeMethod)
mifgsm         torchattacks.MIFGSM
cw-linf        kdbench (PGD on the CW margin loss: no library has it)
apgd-ce        autoattack (pyautoattack APGD-CE)    torchattacks (APGD), art
apgd-t         autoattack (APGD-T, top-9 targets)   torchattacks (APGDT)
fab            autoattack (FAB-T, 9 targets)        torchattacks (FAB)
square         autoattack (Square, 5 000 queries)   torchattacks (Square), art
autoattack     autoattack (reference; standard, plus, rand; standard composed per point from its
               four components, reusing those already run: see kdbench.evaluate.core)
deepfool       torchattacks.DeepFool                art
cw-l2          torchattacks.CW                      art (CarliniL2Method)
=============  ===================================  =====================================

Adapters are thin: they translate budgets and devices, call the library, and return x'.
kdbench re-checks every returned x' itself (prediction, [0, 1] box, norm budget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import KdbenchError
from ..registry import Registry


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


def _num(v: str):
    v = v.strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if "/" in v:
        a, b = v.split("/", 1)
        return float(a) / float(b)
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


# ------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------

def _ta():
    import torchattacks

    return torchattacks


def _torchattacks(cls_name: str, **params):
    def run(model, x, y):
        atk = getattr(_ta(), cls_name)(model, **params)
        return atk(x, y)

    return run


def _pyautoattack(attacks: Optional[List[str]], eps, norm, seed, version="standard", num_classes=10,
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

    run.batch_size = 500
    return run


def _art(attack_cls: str, eps, norm, num_classes, **params):
    def run(model, x, y):
        import art.attacks.evasion as ev
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=num_classes, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.device.type == "cuda" else "cpu")
        kw = dict(params)
        if "eps" in _ART_EPS.get(attack_cls, ("eps",)):
            kw.setdefault("eps", eps)
        if attack_cls in _ART_NORM:
            kw.setdefault("norm", np.inf if norm == "Linf" else 2)
        atk = getattr(ev, attack_cls)(clf, verbose=False, **kw) if attack_cls not in _ART_NO_VERBOSE \
            else getattr(ev, attack_cls)(clf, **kw)
        out = atk.generate(x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
        return torch.from_numpy(out).to(x.device, x.dtype)

    return run


_ART_NORM = {"ProjectedGradientDescent", "FastGradientMethod", "AutoProjectedGradientDescent", "SquareAttack"}
_ART_EPS = {"DeepFool": (), "CarliniL2Method": ()}
_ART_NO_VERBOSE = {"FastGradientMethod"}


def _native_cw(fn: str, **params):
    """kdbench's batched Carlini-Wagner attacks (kdbench.attacks.cw): untargeted, on logits."""
    def run(model, x, y):
        from ..attacks import cw

        with torch.enable_grad():
            x_adv, _ = getattr(cw, fn)(model, x, y, **params)
        return x_adv

    return run


def cw_margin_pgd(eps, step_size, steps, kappa, norm="Linf"):
    """CW-inf of the distillation papers: L-inf PGD (uniform start) maximising the Carlini-Wagner
    margin  max_{j != y} Z_j - Z_y, capped at kappa (methods.md 2.4; IAD's basic_eval.py)."""
    from ..attacks.pgd import pgd

    def run(model, x, y):
        def objective(xa):
            z = model(xa)
            onehot = torch.nn.functional.one_hot(y, z.shape[1]).bool()
            correct = z[onehot]
            other = z.masked_fill(onehot, float("-inf")).max(1).values
            return (-(correct - other + kappa).clamp(min=0)).sum()

        return pgd(x, objective, eps, step_size, steps, start="uniform")

    return run


# ------------------------------------------------------------------------------------------
# registry: name -> builder(eps, norm, seed, num_classes, backend, kwargs) -> Attack
# ------------------------------------------------------------------------------------------

def _defaults(given: Dict[str, Any], **defaults) -> Dict[str, Any]:
    unknown = set(given) - set(defaults)
    if unknown:
        raise KdbenchError(f"unknown attack parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


ATTACKS = Registry("attack")  # user attacks (register_attack); the built-in ones are ATTACK_NAMES below


def register_attack(name: str, norms=("Linf", "L2"), defaults: Optional[Dict[str, Any]] = None):
    """Register a user attack under ``name`` (usable in specs and suites like the built-ins):

        @register_attack("noise", defaults={"tries": 10})
        def noise(eps, norm, seed, num_classes, tries):
            def run(model, x, y):       # -> adversarial images, float in [0, 1]
                ...
            return run

    The factory receives the budget, norm, seed, class count and the spec's parameters (merged
    over ``defaults``; unknown keys are refused); kdbench re-checks every returned example
    (misclassified, in [0, 1], within the budget) as for the library attacks."""
    def deco(factory):
        if name.lower() in ATTACK_NAMES:
            raise ValueError(f"attack {name!r} is built in")
        factory._kdbench_norms, factory._kdbench_defaults = tuple(norms), dict(defaults or {})
        return ATTACKS.register(name)(factory)

    return deco


def build_attack(spec: str, eps: float, norm: str = "Linf", seed: int = 0, num_classes: int = 10) -> Attack:
    name, backend, kw = parse_spec(spec)
    linf = norm == "Linf"
    if name in ATTACKS:
        factory = ATTACKS.get(name)
        if backend not in (None, "user"):
            raise KdbenchError(f"attack {name!r} is a user attack; it has no backend {backend!r}")
        if norm not in factory._kdbench_norms:
            raise KdbenchError(f"attack {name!r} supports {', '.join(factory._kdbench_norms)}, not {norm}")
        p = _defaults(kw, **factory._kdbench_defaults)
        return Attack(spec, name, "user", {"eps": eps, **p}, factory(eps=eps, norm=norm, seed=seed,
                                                                    num_classes=num_classes, **p),
                      norm=norm, eps=eps)
    if name not in ATTACK_NAMES:
        known = ", ".join(ATTACK_NAMES + ATTACKS.names())
        raise KdbenchError(f"unknown attack {name!r} in {spec!r}; known: {known}")
    b = backend or DEFAULT_BACKEND[name]
    if b not in BACKENDS[name]:
        raise KdbenchError(f"attack {name!r} has no backend {b!r}; available: {', '.join(BACKENDS[name])}")
    if not linf and name in LINF_ONLY:
        raise KdbenchError(f"attack {name!r} is L-inf only; use --norm Linf")
    if name in ("apgd-t", "autoattack") and num_classes < 4 and b == "autoattack":
        raise KdbenchError(f"{name} uses the targeted DLR loss, which needs at least 4 classes (model has "
                           f"{num_classes}); use apgd-ce, pgd or cw-linf")
    lib = False
    min_norm = None
    extra: Dict[str, Any] = {}
    if name == "fgsm":
        p = _defaults(kw)
        run = _torchattacks("FGSM", eps=eps) if b == "torchattacks" else \
            _art("FastGradientMethod", eps, norm, num_classes, eps_step=eps, num_random_init=0)
        p = {"eps": eps, **p}
    elif name in ("pgd", "bim"):
        p = _defaults(kw, steps=20 if name == "pgd" else 10, step_size=eps / 4, random_start=name == "pgd")
        if b == "torchattacks":
            if name == "bim":
                run = _torchattacks("BIM", eps=eps, alpha=p["step_size"], steps=p["steps"])
            else:
                run = _torchattacks("PGD" if linf else "PGDL2", eps=eps, alpha=p["step_size"], steps=p["steps"],
                                    random_start=p["random_start"])
        else:
            run = _art("ProjectedGradientDescent", eps, norm, num_classes, eps_step=p["step_size"],
                       max_iter=p["steps"], num_random_init=int(p["random_start"]), batch_size=512)
        p = {"eps": eps, **p}
    elif name == "mifgsm":
        p = _defaults(kw, steps=10, step_size=eps / 10, decay=1.0)
        run = _torchattacks("MIFGSM", eps=eps, alpha=p["step_size"], steps=p["steps"], decay=p["decay"])
        p = {"eps": eps, **p}
    elif name == "cw-linf":
        p = _defaults(kw, steps=20, step_size=eps / 4, kappa=50.0)
        run = cw_margin_pgd(eps, p["step_size"], p["steps"], p["kappa"])
        p = {"eps": eps, **p, "loss": "cw-margin", "random_start": "uniform"}
    elif name in ("apgd-ce", "apgd-t", "fab", "square"):
        if b == "autoattack":
            comp = {"apgd-ce": "apgd-ce", "apgd-t": "apgd-t", "fab": "fab-t", "square": "square"}[name]
            p = _defaults(kw, **({"n_queries": 5000} if name == "square" else {}))
            run = _pyautoattack([comp], eps, norm, seed, num_classes=num_classes, n_queries=p.get("n_queries"))
            lib = True
            p = {"eps": eps, "component": comp, "as_in": "AutoAttack standard", "n_iter": 100,
                 "n_restarts": 1, "n_target_classes": min(9, num_classes - 1),
                 **({"n_queries": p["n_queries"], "p_init": 0.8} if name == "square" else {})}
        elif b == "torchattacks":
            nm = "Linf" if linf else "L2"
            if name == "apgd-ce":
                p = _defaults(kw, steps=100, n_restarts=1)
                run = _torchattacks("APGD", norm=nm, eps=eps, steps=p["steps"], n_restarts=p["n_restarts"],
                                    loss="ce", seed=seed)
            elif name == "apgd-t":
                p = _defaults(kw, steps=100, n_restarts=1)
                run = _torchattacks("APGDT", norm=nm, eps=eps, steps=p["steps"], n_restarts=p["n_restarts"],
                                    n_classes=num_classes, seed=seed)
            elif name == "fab":
                p = _defaults(kw, steps=100, n_restarts=1)
                run = _torchattacks("FAB", norm=nm, eps=eps, steps=p["steps"], n_restarts=p["n_restarts"],
                                    n_classes=num_classes, seed=seed)
            else:
                p = _defaults(kw, n_queries=5000, p_init=0.8)
                run = _torchattacks("Square", norm=nm, eps=eps, n_queries=p["n_queries"], p_init=p["p_init"],
                                    seed=seed)
            p = {"eps": eps, **p}
        else:  # art
            if name == "apgd-ce":
                p = _defaults(kw, steps=100, n_restarts=1)
                run = _art("AutoProjectedGradientDescent", eps, norm, num_classes, eps_step=2 * eps,
                           max_iter=p["steps"], nb_random_init=p["n_restarts"], batch_size=512,
                           loss_type="cross_entropy")
            else:
                p = _defaults(kw, n_queries=5000, p_init=0.8)
                run = _art("SquareAttack", eps, norm, num_classes, max_iter=p["n_queries"], p_init=p["p_init"],
                           nb_restarts=1, batch_size=512)
            p = {"eps": eps, **p}
    elif name == "autoattack":
        p = _defaults(kw, version="standard", composed=True)
        if p["version"] not in ("standard", "plus", "rand"):
            raise KdbenchError(f"autoattack version must be standard, plus or rand, got {p['version']!r}")
        p["composed"] = bool(p["composed"]) and p["version"] == "standard"
        run = _pyautoattack(None, eps, norm, seed, version=p["version"], num_classes=num_classes)
        lib = True
        if p["composed"]:  # evaluate() runs AA's sequence itself, reusing components already run
            extra = {"components": [build_attack(c, eps, norm, seed, num_classes) for c in AA_STANDARD]}
        p = {"eps": eps, "norm": norm, "seed": seed, **p, "library": "pyautoattack (reference AutoAttack)"}
    elif name == "deepfool":
        p = _defaults(kw, steps=50, overshoot=0.02)
        run = _torchattacks("DeepFool", steps=p["steps"], overshoot=p["overshoot"]) if b == "torchattacks" else \
            _art("DeepFool", eps, norm, num_classes, max_iter=p["steps"], epsilon=p["overshoot"], batch_size=512)
        p = {**p, "minimal_perturbation": True, "counted_within": f"{norm} <= {eps}"}
        min_norm = "L2"
    elif name == "cw-l2" and b == "kdbench":
        p = _defaults(kw, c0=1e-3, kappa=0.0, steps=1000, binary_steps=9, lr=0.01)
        run = _native_cw("cw_l2", c0=p["c0"], kappa=p["kappa"], steps=p["steps"], binary_steps=p["binary_steps"],
                         lr=p["lr"])
        p = {**p, "minimal_perturbation": True, "binary_search": True, "counted_within": f"{norm} <= {eps}"}
        min_norm = "L2"
    elif name == "cw-l2":
        p = _defaults(kw, c=1.0, kappa=0.0, steps=100, lr=0.01)
        if b == "torchattacks":
            run = _torchattacks("CW", c=p["c"], kappa=p["kappa"], steps=p["steps"], lr=p["lr"])
        else:
            run = _art("CarliniL2Method", eps, norm, num_classes, confidence=p["kappa"], initial_const=p["c"],
                       max_iter=p["steps"], learning_rate=p["lr"], batch_size=512)
        p = {**p, "minimal_perturbation": True, "counted_within": f"{norm} <= {eps}"}
        min_norm = "L2"
    elif name == "cw-l0":
        p = _defaults(kw, c0=1e-3, c_max=2e6, steps=1000, lr=0.01, kappa=0.01, max_rounds=0)
        run = _native_cw("cw_l0", c0=p["c0"], c_max=p["c_max"], steps=p["steps"], lr=p["lr"], kappa=p["kappa"],
                         max_rounds=p["max_rounds"] or None)
        p = {**p, "minimal_perturbation": True, "counted_within": f"{norm} <= {eps}", "l0": "changed pixels"}
        min_norm = "L0"
    elif name == "cw-linf-min":
        p = _defaults(kw, c0=1e-5, c_max=20.0, steps=1000, lr=5e-3, decrease=0.9)
        run = _native_cw("cw_linf", c0=p["c0"], c_max=p["c_max"], steps=p["steps"], lr=p["lr"],
                         decrease=p["decrease"])
        p = {**p, "minimal_perturbation": True, "counted_within": f"{norm} <= {eps}"}
        min_norm = "Linf"
    else:  # pragma: no cover - guarded by ATTACK_NAMES
        raise KdbenchError(f"unknown attack {name!r}")
    return Attack(spec, name, b, p, run, norm=norm, eps=eps, library_batches=lib, min_norm=min_norm, extra=extra)


# AutoAttack's standard version: these components, in this order, each on the points the earlier
# ones left robust (pyautoattack's run_standard_evaluation); the specs are kdbench's single-component
# attacks, which configure each exactly as that version does.
AA_STANDARD = ["apgd-ce", "apgd-t", "fab", "square"]


ATTACK_NAMES = ["fgsm", "pgd", "bim", "mifgsm", "cw-linf", "apgd-ce", "apgd-t", "fab", "square", "autoattack",
                "deepfool", "cw-l2", "cw-l0", "cw-linf-min"]
DEFAULT_BACKEND = {"fgsm": "torchattacks", "pgd": "torchattacks", "bim": "torchattacks", "mifgsm": "torchattacks",
                   "cw-linf": "kdbench", "apgd-ce": "autoattack", "apgd-t": "autoattack", "fab": "autoattack",
                   "square": "autoattack", "autoattack": "autoattack", "deepfool": "torchattacks",
                   "cw-l2": "kdbench", "cw-l0": "kdbench", "cw-linf-min": "kdbench"}
BACKENDS = {"fgsm": ["torchattacks", "art"], "pgd": ["torchattacks", "art"], "bim": ["torchattacks", "art"],
            "mifgsm": ["torchattacks"], "cw-linf": ["kdbench"], "apgd-ce": ["autoattack", "torchattacks", "art"],
            "apgd-t": ["autoattack", "torchattacks"], "fab": ["autoattack", "torchattacks"],
            "square": ["autoattack", "torchattacks", "art"], "autoattack": ["autoattack"],
            "deepfool": ["torchattacks", "art"], "cw-l2": ["kdbench", "torchattacks", "art"], "cw-l0": ["kdbench"],
            "cw-linf-min": ["kdbench"]}
LINF_ONLY = {"fgsm", "bim", "mifgsm", "cw-linf"}

SUITES = {
    "quick": ["fgsm", "pgd", "cw-linf", "apgd-ce", "apgd-t"],
    # square before autoattack: AutoAttack then reuses Square's run (and APGD-CE's, APGD-T's) per point
    "standard": ["fgsm", "pgd", "cw-linf", "apgd-ce", "apgd-t", "square", "autoattack"],
    # the seed papers' protocol: FGSM, PGD-20 (step eps/4 = 2/255 at 8/255), CW-inf 20 steps, AutoAttack,
    # and seed 000's minimal-perturbation attacks (rho_adv under CW-L0 / L2 / L-inf)
    "paper": ["fgsm", "pgd:steps=20", "cw-linf:steps=20", "autoattack", "cw-l0", "cw-l2", "cw-linf-min"],
}


def suite(name: str) -> List[str]:
    if name not in SUITES:
        raise KdbenchError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return list(SUITES[name])


def within_budget(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Per-sample check ||delta|| <= eps (with a float tolerance)."""
    flat = delta.flatten(1)
    n = flat.abs().max(1).values if norm == "Linf" else flat.norm(dim=1)
    return n <= eps * (1 + 1e-5) + 1e-7


