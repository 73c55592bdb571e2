"""Minimal-perturbation attacks (seed 000's rho_adv): DeepFool (torchattacks, ART), Carlini-Wagner
L2 (kdbench's batched binary search by default; torchattacks and ART at a fixed constant), and
kdbench's batched CW-L0 and CW-L-inf (:mod:`kdbench.attacks.cw`); the strongest minimal-norm
attacks through libraries (FMN and DDN from foolbox, FAB from pyautoattack); and the ensembles
``min-l0``, ``min-l2``, ``min-linf``: per point the smallest verified distance over their members.
Each reports the distance it found (its ``min_norm``); robust accuracy counts a point broken when
that distance is within the evaluation's budget."""
from __future__ import annotations

import torch

from ..adapters.advlib import advlib_run
from ..adapters.art import art_run
from ..adapters.autoattack import fab_minimal_run
from ..adapters.foolbox import foolbox_run
from ..adapters.torchattacks import torchattacks_run
from ..errors import KdbenchError
from .registry import Built, register_attack


def native_cw(fn: str, init: str = "none", eps=None, norm="Linf", seed=0, num_classes=10, **params):
    """kdbench's batched Carlini-Wagner attacks (kdbench.attacks.cw): untargeted, on logits.
    ``init``: an attack spec whose x' the CW attack starts from (its passes count in the CW
    attack's cost), or "none" for the reference start at x."""
    warm = None if str(init).lower() in ("none", "") else _warm_start(fn, init, eps, norm, seed, num_classes)

    def run(model, x, y):
        from . import cw

        with torch.enable_grad():
            start = None if warm is None else warm.run(model, x, y).detach().to(x.dtype)
            x_adv, _ = getattr(cw, fn)(model, x, y, start=start, **params) if start is not None else \
                getattr(cw, fn)(model, x, y, **params)
        return x_adv

    return run


def _warm_start(fn, init, eps, norm, seed, num_classes):
    from .registry import build_attack

    want = {"cw_l0": "L0", "cw_linf": "Linf"}[fn]
    a = build_attack(str(init), eps, norm, seed, num_classes)
    if a.min_norm != want:
        raise KdbenchError(f"{fn.replace('_', '-')}: init {init!r} is not a minimal-perturbation attack in {want} "
                           f"(its distance: {a.min_norm or 'none'})")
    return a


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


# Cheaper schedules, measured against the reference schedule (init=none,abort_early=false,patience=0:
# methods.md 11.2/11.3) by benchmarks/cw_speed.py (docs/evaluate.md, "Cheaper CW-L0 and CW-L-inf"):
# CW-L0 drops a constant whose loss stalled over 10 steps and starts at x (a give-up rule on
# "hopeless" constants, patience, fired at small constants on the robust Fashion-MNIST model and
# lost every point; warm starts from fmn-l0 / min-l0 cost more for the same distances); CW-L-inf
# starts from the min-linf ensemble's x' (its passes counted), checks the plateau every 50 steps
# and gives up after 3 hopeless doublings (from a warm start that kept the distances; without a
# warm start the ladder climbs from c0 through many hopeless constants, so patience defaults to 0
# there: on a seed-000 cwnet at 30 steps, patience 3 from x gave mean L-inf 0.337, patience 0 0.246).
@register_attack("cw-l0", backends=("kdbench",), builtin=True, min_norm="L0")
def cw_l0(eps, norm, seed, num_classes, backend, c0=1e-3, c_max=2e6, steps=1000, lr=0.01, kappa=0.01, max_rounds=0,
          init="none", abort_early=True, patience=0, abort_every=10):
    run = native_cw("cw_l0", init, eps, norm, seed, num_classes, c0=c0, c_max=c_max, steps=steps, lr=lr,
                    kappa=kappa, max_rounds=max_rounds or None, abort_early=bool(abort_early), patience=patience,
                    abort_every=abort_every)
    return Built(run, {**_minimal(norm, eps, c0=c0, c_max=c_max, steps=steps, lr=lr, kappa=kappa,
                                  max_rounds=max_rounds, init=init, abort_early=abort_early, patience=patience,
                                  abort_every=abort_every),
                       "l0": "changed pixels"})


@register_attack("cw-linf-min", backends=("kdbench",), builtin=True, min_norm="Linf")
def cw_linf_min(eps, norm, seed, num_classes, backend, c0=1e-5, c_max=20.0, steps=1000, lr=5e-3, decrease=0.9,
                init="min-linf", abort_early=True, patience=None, abort_every=50):
    """CW-L-inf's minimal distance (methods.md 11.3); ``patience`` (None): 3 after a warm start, 0 from x."""
    if patience is None:
        patience = 0 if str(init).lower() == "none" else 3
    run = native_cw("cw_linf", init, eps, norm, seed, num_classes, c0=c0, c_max=c_max, steps=steps, lr=lr,
                    decrease=decrease, abort_early=bool(abort_early), patience=patience, abort_every=abort_every or None)
    return Built(run, _minimal(norm, eps, c0=c0, c_max=c_max, steps=steps, lr=lr, decrease=decrease, init=init,
                               abort_early=abort_early, patience=patience, abort_every=abort_every))


# ---- the strongest minimal-norm attacks, through libraries (foolbox, adv-lib, pyautoattack) ----
# foolbox 3.3.4 for FMN and DDN (it needs only eagerpy); adv-lib 0.2.8 for sigma-zero, which no
# other library has: its attacks package imports torchvision and visdom when it loads, so
# kdbench.adapters.advlib loads the one module from its file, and adv-lib is installed without its
# dependencies (visdom's sdist no longer builds).  FAB comes from pyautoattack (a core dependency).
# docs/evaluate.md, "Minimal perturbation", has the measurements.

@register_attack("fmn-l2", backends=("foolbox",), builtin=True, min_norm="L2")
def fmn_l2(eps, norm, seed, num_classes, backend, steps=100, max_stepsize=1.0, gamma=0.05, binary_search_steps=10):
    """Fast Minimum-Norm L2 (Pintor et al., NeurIPS 2021), foolbox's L2FMNAttack."""
    p = dict(steps=steps, max_stepsize=max_stepsize, gamma=gamma, binary_search_steps=binary_search_steps)
    return Built(foolbox_run("L2FMNAttack", **p), _minimal(norm, eps, **p))


@register_attack("fmn-linf", backends=("foolbox",), builtin=True, min_norm="Linf")
def fmn_linf(eps, norm, seed, num_classes, backend, steps=100, max_stepsize=1.0, gamma=0.05, binary_search_steps=10):
    """Fast Minimum-Norm L-inf, foolbox's LInfFMNAttack."""
    p = dict(steps=steps, max_stepsize=max_stepsize, gamma=gamma, binary_search_steps=binary_search_steps)
    return Built(foolbox_run("LInfFMNAttack", **p), _minimal(norm, eps, **p))


@register_attack("fmn-l0", backends=("foolbox",), builtin=True, min_norm="L0")
def fmn_l0(eps, norm, seed, num_classes, backend, steps=100, max_stepsize=1.0, gamma=0.05, binary_search_steps=10):
    """Fast Minimum-Norm L0, foolbox's L0FMNAttack (it counts changed entries; kdbench's L0
    counts changed pixels, the same on one-channel images and never more on others)."""
    p = dict(steps=steps, max_stepsize=max_stepsize, gamma=gamma, binary_search_steps=binary_search_steps)
    return Built(foolbox_run("L0FMNAttack", **p), {**_minimal(norm, eps, **p), "l0": "changed pixels"})


@register_attack("sigma-zero", backends=("adv-lib",), builtin=True, min_norm="L0")
def sigma_zero(eps, norm, seed, num_classes, backend, steps=1000, eta0=1.0, sigma=0.001, tau0=0.3, tau_factor=0.01):
    """sigma-zero (Cina et al., ICLR 2025: a smooth L0 approximation with an adaptive sparsity
    threshold), adv-lib's ``sigma_zero``, untargeted, at its defaults; one forward and one backward
    per step and point.  It counts changed entries; kdbench's L0 counts changed pixels."""
    p = dict(steps=steps, eta0=eta0, sigma=sigma, tau0=tau0, tau_factor=tau_factor)
    greek = {"\u03b7_0": float(eta0), "\u03c3": float(sigma), "\u03c4_0": float(tau0),  # adv-lib's names: eta_0,
             "\u03c4_factor": float(tau_factor)}                                      # sigma, tau_0, tau_factor
    run = advlib_run("sigma_zero", "sigma_zero", num_steps=int(steps), **greek)
    return Built(run, {**_minimal(norm, eps, **p), "l0": "changed pixels"})


@register_attack("ddn", backends=("foolbox",), builtin=True, min_norm="L2")
def ddn(eps, norm, seed, num_classes, backend, steps=100, init_epsilon=1.0, gamma=0.05):
    """Decoupled Direction and Norm (Rony et al., CVPR 2019), foolbox's DDNAttack."""
    p = dict(steps=steps, init_epsilon=init_epsilon, gamma=gamma)
    return Built(foolbox_run("DDNAttack", **p), _minimal(norm, eps, **p))


@register_attack("fab-l2", backends=("autoattack",), builtin=True, min_norm="L2")
def fab_l2(eps, norm, seed, num_classes, backend, n_iter=100):
    """FAB L2 (Croce & Hein, ICML 2020) as a minimal-norm attack: pyautoattack's FABAttack_PT,
    untargeted, one run, no budget (eps = inf)."""
    return Built(fab_minimal_run("L2", seed, n_iter), _minimal(norm, eps, n_iter=n_iter, seed=seed))


@register_attack("fab-linf", backends=("autoattack",), builtin=True, min_norm="Linf")
def fab_linf(eps, norm, seed, num_classes, backend, n_iter=100):
    """FAB L-inf, as ``fab-l2``."""
    return Built(fab_minimal_run("Linf", seed, n_iter), _minimal(norm, eps, n_iter=n_iter, seed=seed))


# ---- ensembles: rho_adv per norm as the per-point minimum over the strongest attacks ------------

# the default members, chosen by measurement (docs/evaluate.md, "Minimal perturbation")
# (L0: on four seed-000 cwnets sigma-zero's distances were 1.008 of the per-point best of ten L0
# attacks, fmn-l0 at 100 or 1000 steps 1.63 / 1.61 and cw-l0 1.63; on digits and two Fashion-MNIST
# models 1.004-1.032, fmn-l0 1.20-1.67; fmn-l0 at 100 steps stays as a cheap second opinion)
ENSEMBLES = {"L0": "sigma-zero+fmn-l0", "L2": "ddn+fab-l2", "Linf": "fmn-linf+fab-linf"}


def minimum_over(distances: list) -> tuple:
    """Per point, the smallest of the members' verified distances (inf where none succeeded) and
    the index of the member that found it: an ensemble is never above its best member."""
    d = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in distances])
    best, which = d.min(0)
    return best, which


def _ensemble(dist_norm: str, members: str, eps, norm, seed, num_classes):
    from .cw import distance
    from .registry import build_attack

    names = [m.strip() for m in str(members).split("+") if m.strip()]
    if not names:
        raise KdbenchError(f"min-{dist_norm.lower()}: members must name at least one attack (a+b+c)")
    built = [build_attack(m, eps, norm, seed, num_classes) for m in names]
    for m in built:
        if m.min_norm != dist_norm:
            raise KdbenchError(f"min-{dist_norm.lower()}: member {m.key!r} is not a minimal-perturbation attack in "
                               f"{dist_norm} (its distance: {m.min_norm or 'none'})")

    def run(model, x, y):
        """Each member, every x' re-checked (prediction, [0, 1]) and its distance taken in float64;
        per point the x' of the smallest.  ``kdbench evaluate`` derives the same minimum from the
        members' own recorded outcomes instead (pipeline.attack_all), so each keeps its cost."""
        cands, dists = [], []
        for m in built:
            xa = m.run(model, x, y).detach().to(x.dtype)
            with torch.no_grad():
                fooled = (model(xa).argmax(1) != y) & (xa.flatten(1).min(1).values >= 0) & \
                    (xa.flatten(1).max(1).values <= 1) & torch.isfinite(xa.flatten(1)).all(1)
            d = distance(xa.double() - x.double(), dist_norm)
            cands.append(xa)
            dists.append(torch.where(fooled, d, torch.full_like(d, float("inf"))))
        best, which = minimum_over(dists)
        out = x.clone()
        for i, xa in enumerate(cands):
            pick = (which == i) & torch.isfinite(best)
            out[pick] = xa[pick]
        return out

    return Built(run, {**_minimal(norm, eps, members=names), "ensemble": True},
                 extra={"members": built})


@register_attack("min-l0", backends=("kdbench",), builtin=True, min_norm="L0")
def min_l0(eps, norm, seed, num_classes, backend, members=ENSEMBLES["L0"]):
    """rho_adv's L0 minimum over ``members`` (attack names joined by +)."""
    return _ensemble("L0", members, eps, norm, seed, num_classes)


@register_attack("min-l2", backends=("kdbench",), builtin=True, min_norm="L2")
def min_l2(eps, norm, seed, num_classes, backend, members=ENSEMBLES["L2"]):
    """rho_adv's L2 minimum over ``members``."""
    return _ensemble("L2", members, eps, norm, seed, num_classes)


@register_attack("min-linf", backends=("kdbench",), builtin=True, min_norm="Linf")
def min_linf(eps, norm, seed, num_classes, backend, members=ENSEMBLES["Linf"]):
    """rho_adv's L-inf minimum over ``members``."""
    return _ensemble("Linf", members, eps, norm, seed, num_classes)
