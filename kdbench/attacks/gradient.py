"""Gradient attacks with a fixed budget: FGSM, PGD (L-inf / L2), BIM, MI-FGSM (torchattacks by
default, ART where it has them) and CW-inf, PGD on the Carlini-Wagner margin (native: no library
has it; docs/methods.md §2.4).  Defaults are the seed papers': PGD-20 with step eps/4."""
from __future__ import annotations

from ..adapters.art import art_run
from ..adapters.torchattacks import torchattacks_run
from .pgd import cw_margin_pgd
from .registry import Built, register_attack


@register_attack("fgsm", norms=("Linf",), backends=("torchattacks", "art"), builtin=True, column="fgsm",
                 single_step=True)
def fgsm(eps, norm, seed, num_classes, backend):
    run = torchattacks_run("FGSM", eps=eps) if backend == "torchattacks" else \
        art_run("FastGradientMethod", eps, norm, num_classes, eps_step=eps, num_random_init=0)
    return Built(run, {"eps": eps})


@register_attack("pgd", backends=("torchattacks", "art"), builtin=True, column="pgd20", margin_of="cw-linf",
                 iterative_ce=True)
def pgd(eps, norm, seed, num_classes, backend, steps=20, step_size=None, random_start=True):
    step_size = eps / 4 if step_size is None else step_size
    if backend == "torchattacks":
        run = torchattacks_run("PGD" if norm == "Linf" else "PGDL2", eps=eps, alpha=step_size, steps=steps,
                               random_start=random_start)
    else:
        run = art_run("ProjectedGradientDescent", eps, norm, num_classes, eps_step=step_size, max_iter=steps,
                      num_random_init=int(random_start), batch_size=512)
    return Built(run, {"eps": eps, "steps": steps, "step_size": step_size, "random_start": random_start})


@register_attack("bim", norms=("Linf",), backends=("torchattacks", "art"), builtin=True, iterative_ce=True)
def bim(eps, norm, seed, num_classes, backend, steps=10, step_size=None, random_start=False):
    step_size = eps / 4 if step_size is None else step_size
    if backend == "torchattacks":
        run = torchattacks_run("BIM", eps=eps, alpha=step_size, steps=steps)
    else:
        run = art_run("ProjectedGradientDescent", eps, norm, num_classes, eps_step=step_size, max_iter=steps,
                      num_random_init=int(random_start), batch_size=512)
    return Built(run, {"eps": eps, "steps": steps, "step_size": step_size, "random_start": random_start})


@register_attack("mifgsm", norms=("Linf",), backends=("torchattacks",), builtin=True)
def mifgsm(eps, norm, seed, num_classes, backend, steps=10, step_size=None, decay=1.0):
    step_size = eps / 10 if step_size is None else step_size
    run = torchattacks_run("MIFGSM", eps=eps, alpha=step_size, steps=steps, decay=decay)
    return Built(run, {"eps": eps, "steps": steps, "step_size": step_size, "decay": decay})


@register_attack("cw-linf", norms=("Linf",), backends=("kdbench",), builtin=True, column="cw_inf")
def cw_linf(eps, norm, seed, num_classes, backend, steps=20, step_size=None, kappa=50.0):
    step_size = eps / 4 if step_size is None else step_size
    return Built(cw_margin_pgd(eps, step_size, steps, kappa),
                 {"eps": eps, "steps": steps, "step_size": step_size, "kappa": kappa, "loss": "cw-margin",
                  "random_start": "uniform"})
