"""Training objectives as pure functions of logits (testable on tensors).

Keyword arguments follow one convention: ``s_nat``/``s_adv`` are the student's logits on the
clean x and the adversarial x', ``t_nat``/``t_adv`` the teacher's, ``y`` the labels; then each
method's hyperparameters under its paper's names, defaulting to the official CIFAR-10 code
(reductions included; see docs/methods.md and ../shared/methods.md).

KL convention (methods.md 0.1): ``kl(p_logits, q_logits)`` is KL(softmax(p) || softmax(q)),
the first argument being the target (teacher) distribution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, T: float = 1.0, reduction: str = "batchmean",
       detach_target: bool = False) -> torch.Tensor:
    """KL(softmax(p/T) || softmax(q/T)) with PyTorch's reductions:

    * ``batchmean``: sum over classes and batch, divided by B;
    * ``mean``: element-wise mean, divided by B*C (``nn.KLDivLoss()``'s default);
    * ``sum``; ``none`` (per-sample sums over classes, shape B).
    """
    p = F.softmax(p_logits / T, dim=1)
    if detach_target:
        p = p.detach()
    log_q = F.log_softmax(q_logits / T, dim=1)
    log_p = F.log_softmax(p_logits / T, dim=1)
    if detach_target:
        log_p = log_p.detach()
    terms = p * (log_p - log_q)
    return reduce_terms(terms, reduction)


def reduce_terms(terms: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "batchmean":
        return terms.sum() / terms.shape[0]
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    if reduction == "none":
        return terms.sum(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def natural_loss(*, s_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Standard training: mean cross-entropy on clean inputs."""
    return F.cross_entropy(s_nat, y)


def pgd_at_loss(*, s_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PGD-AT (Madry et al. 2018, Eq. 2.1; methods.md 10.1): mean CE on the adversarial inputs."""
    return F.cross_entropy(s_adv, y)


def trades_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, beta: float = 6.0) -> torch.Tensor:
    """TRADES (Zhang et al. 2019, Eq. 5; methods.md 10.2):
    CE(f(x), y) + beta * (1/B) sum_b KL(softmax(f(x_b)) || softmax(f(x'_b))).

    The target softmax(f(x)) is *not* detached, as in the official code."""
    return F.cross_entropy(s_nat, y) + beta * kl(s_nat, s_adv, reduction="batchmean")
