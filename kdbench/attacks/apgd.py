"""AutoAttack and its components (Croce & Hein 2020).  By default through the reference
implementation (``pyautoattack``), each component configured exactly as in AutoAttack's
standard version (APGD-CE, APGD-T with 9 targets, FAB-T, Square with 5 000 queries); torchattacks
and ART where they have them.  ``autoattack`` (standard, plus, rand) is the reference call;
standard is composed per point from its four components, reusing those already run
(``kdbench.evaluation.pipeline``; docs/evaluate.md)."""
from __future__ import annotations

from ..adapters.art import art_run
from ..adapters.autoattack import autoattack_run
from ..adapters.torchattacks import torchattacks_run
from ..errors import KdbenchError
from .registry import Built, build_attack, register_attack

# AutoAttack's standard version: these components, in this order, each on the points the earlier
# ones left robust (pyautoattack's run_standard_evaluation); the specs are kdbench's single-component
# attacks, which configure each exactly as that version does.
AA_STANDARD = ["apgd-ce", "apgd-t", "fab", "square"]
_COMPONENT = {"apgd-ce": "apgd-ce", "apgd-t": "apgd-t", "fab": "fab-t", "square": "square"}


def _aa_component(name, eps, norm, seed, num_classes, n_queries=None) -> Built:
    comp = _COMPONENT[name]
    run = autoattack_run([comp], eps, norm, seed, num_classes=num_classes, n_queries=n_queries)
    return Built(run, {"eps": eps, "component": comp, "as_in": "AutoAttack standard", "n_iter": 100,
                       "n_restarts": 1, "n_target_classes": min(9, num_classes - 1),
                       **({"n_queries": n_queries, "p_init": 0.8} if name == "square" else {})},
                 library_batches=True)


@register_attack("apgd-ce", backends=("autoattack", "torchattacks", "art"), builtin=True, margin_of="apgd-t",
                 iterative_ce=True, backend_defaults={"autoattack": ()})
def apgd_ce(eps, norm, seed, num_classes, backend, steps=100, n_restarts=1):
    if backend == "autoattack":
        return _aa_component("apgd-ce", eps, norm, seed, num_classes)
    if backend == "torchattacks":
        run = torchattacks_run("APGD", norm=norm, eps=eps, steps=steps, n_restarts=n_restarts, loss="ce", seed=seed)
    else:
        run = art_run("AutoProjectedGradientDescent", eps, norm, num_classes, eps_step=2 * eps, max_iter=steps,
                      nb_random_init=n_restarts, batch_size=512, loss_type="cross_entropy")
    return Built(run, {"eps": eps, "steps": steps, "n_restarts": n_restarts})


def _targeted(name, cls_name, eps, norm, seed, num_classes, backend, steps, n_restarts) -> Built:
    """APGD-T and FAB-T: AutoAttack's component, or torchattacks' class of the same attack."""
    if backend == "autoattack":
        return _aa_component(name, eps, norm, seed, num_classes)
    run = torchattacks_run(cls_name, norm=norm, eps=eps, steps=steps, n_restarts=n_restarts, n_classes=num_classes,
                           seed=seed)
    return Built(run, {"eps": eps, "steps": steps, "n_restarts": n_restarts})


@register_attack("apgd-t", backends=("autoattack", "torchattacks"), builtin=True, min_classes=4,
                 backend_defaults={"autoattack": ()})
def apgd_t(eps, norm, seed, num_classes, backend, steps=100, n_restarts=1):
    return _targeted("apgd-t", "APGDT", eps, norm, seed, num_classes, backend, steps, n_restarts)


@register_attack("fab", backends=("autoattack", "torchattacks"), builtin=True, backend_defaults={"autoattack": ()})
def fab(eps, norm, seed, num_classes, backend, steps=100, n_restarts=1):
    return _targeted("fab", "FAB", eps, norm, seed, num_classes, backend, steps, n_restarts)


@register_attack("square", backends=("autoattack", "torchattacks", "art"), builtin=True, white_box=False,
                 backend_defaults={"autoattack": ("n_queries",)})
def square(eps, norm, seed, num_classes, backend, n_queries=5000, p_init=0.8):
    if backend == "autoattack":
        return _aa_component("square", eps, norm, seed, num_classes, n_queries=n_queries)
    if backend == "torchattacks":
        run = torchattacks_run("Square", norm=norm, eps=eps, n_queries=n_queries, p_init=p_init, seed=seed)
    else:
        run = art_run("SquareAttack", eps, norm, num_classes, max_iter=n_queries, p_init=p_init, nb_restarts=1,
                      batch_size=512)
    return Built(run, {"eps": eps, "n_queries": n_queries, "p_init": p_init})


@register_attack("autoattack", backends=("autoattack",), builtin=True, column="autoattack", min_classes=4)
def autoattack(eps, norm, seed, num_classes, backend, version="standard", composed=True):
    if version not in ("standard", "plus", "rand"):
        raise KdbenchError(f"autoattack version must be standard, plus or rand, got {version!r}")
    composed = bool(composed) and version == "standard"
    run = autoattack_run(None, eps, norm, seed, version=version, num_classes=num_classes)
    # composed: evaluate() runs AA's sequence itself, reusing components already run
    extra = {"components": [build_attack(c, eps, norm, seed, num_classes) for c in AA_STANDARD]} if composed else {}
    return Built(run, {"eps": eps, "norm": norm, "seed": seed, "version": version, "composed": composed,
                       "library": "pyautoattack (reference AutoAttack)"}, library_batches=True, extra=extra)
