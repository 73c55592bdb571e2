"""Minimal-perturbation attacks (seed 000's rho_adv): DeepFool (torchattacks, ART), Carlini-Wagner
L2 (kdbench's batched binary search by default; torchattacks and ART at a fixed constant), and
kdbench's batched CW-L0 and CW-L-inf (:mod:`kdbench.attacks.cw`).  Each reports the distance it
found (its ``min_norm``); robust accuracy counts a point broken when that distance is within the
evaluation's budget."""
from __future__ import annotations

import torch

from ..adapters.art import art_run
from ..adapters.torchattacks import torchattacks_run
from .registry import Built, register_attack


def native_cw(fn: str, **params):
    """kdbench's batched Carlini-Wagner attacks (kdbench.attacks.cw): untargeted, on logits."""
    def run(model, x, y):
        from . import cw

        with torch.enable_grad():
            x_adv, _ = getattr(cw, fn)(model, x, y, **params)
        return x_adv

    return run


def _minimal(norm, eps, **params):
    return {**params, "minimal_perturbation": True, "counted_within": f"{norm} <= {eps}"}


@register_attack("deepfool", backends=("torchattacks", "art"), builtin=True, min_norm="L2")
def deepfool(eps, norm, seed, num_classes, backend, steps=50, overshoot=0.02):
    run = torchattacks_run("DeepFool", steps=steps, overshoot=overshoot) if backend == "torchattacks" else \
        art_run("DeepFool", eps, norm, num_classes, max_iter=steps, epsilon=overshoot, batch_size=512)
    return Built(run, _minimal(norm, eps, steps=steps, overshoot=overshoot))


_CW_L2_FIXED = {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 0.01}  # one constant, as the libraries run it


@register_attack("cw-l2", backends=("kdbench", "torchattacks", "art"), builtin=True, min_norm="L2",
                 backend_defaults={"torchattacks": _CW_L2_FIXED, "art": _CW_L2_FIXED})
def cw_l2(eps, norm, seed, num_classes, backend, c0=1e-3, kappa=0.0, steps=1000, binary_steps=9, lr=0.01, **fixed):
    """kdbench: a binary search over c (the signature's defaults); torchattacks and ART: the one
    constant ``fixed["c"]`` (their backend_defaults)."""
    if backend == "kdbench":
        run = native_cw("cw_l2", c0=c0, kappa=kappa, steps=steps, binary_steps=binary_steps, lr=lr)
        return Built(run, {**_minimal(norm, eps, c0=c0, kappa=kappa, steps=steps, binary_steps=binary_steps, lr=lr),
                           "binary_search": True})
    c = fixed["c"]
    if backend == "torchattacks":
        run = torchattacks_run("CW", c=c, kappa=kappa, steps=steps, lr=lr)
    else:
        run = art_run("CarliniL2Method", eps, norm, num_classes, confidence=kappa, initial_const=c, max_iter=steps,
                      learning_rate=lr, batch_size=512)
    return Built(run, _minimal(norm, eps, c=c, kappa=kappa, steps=steps, lr=lr))


@register_attack("cw-l0", backends=("kdbench",), builtin=True, min_norm="L0")
def cw_l0(eps, norm, seed, num_classes, backend, c0=1e-3, c_max=2e6, steps=1000, lr=0.01, kappa=0.01, max_rounds=0):
    run = native_cw("cw_l0", c0=c0, c_max=c_max, steps=steps, lr=lr, kappa=kappa, max_rounds=max_rounds or None)
    return Built(run, {**_minimal(norm, eps, c0=c0, c_max=c_max, steps=steps, lr=lr, kappa=kappa,
                                  max_rounds=max_rounds), "l0": "changed pixels"})


@register_attack("cw-linf-min", backends=("kdbench",), builtin=True, min_norm="Linf")
def cw_linf_min(eps, norm, seed, num_classes, backend, c0=1e-5, c_max=20.0, steps=1000, lr=5e-3, decrease=0.9):
    run = native_cw("cw_linf", c0=c0, c_max=c_max, steps=steps, lr=lr, decrease=decrease)
    return Built(run, _minimal(norm, eps, c0=c0, c_max=c_max, steps=steps, lr=lr, decrease=decrease))
