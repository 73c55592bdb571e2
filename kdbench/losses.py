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


# ------------------------------------------------------------------------------------------
# Distillation objectives (Distillation methods I; methods.md sections 1-5, 8)
# ------------------------------------------------------------------------------------------

def custom_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The "custom KL" of RSLAD and MTARD (methods.md 0.1): per element
    p * (log(p + 1e-5) - log q), with p = softmax(teacher) detached.  Same gradient as KL; the
    value differs by sum p log((p + 1e-5) / p), which matters for MTARD's adaptive weights."""
    p = F.softmax(p_logits, dim=1).detach()
    terms = p * (torch.log(p + 1e-5) - F.log_softmax(q_logits, dim=1))
    return reduce_terms(terms, reduction)


def ard_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, y: torch.Tensor,
             alpha: float = 1.0, tau: float = 30.0) -> torch.Tensor:
    """ARD (Goldblum et al. 2020, Eq. 4; methods.md 1.2):
    alpha tau^2 KL(T^tau(x) || S^tau(x')) [element-wise mean over B*C, ``KLDivLoss()``]
    + (1 - alpha) CE(S(x), y) [at temperature 1].  Official defaults alpha = 1, tau = 30."""
    soft = kl(t_nat.detach(), s_adv, T=tau, reduction="mean") * (alpha * tau * tau)
    return soft + (1 - alpha) * F.cross_entropy(s_nat, y)


def iad_trust(t_adv: torch.Tensor, y: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """IAD's per-sample trust in the teacher (methods.md 2.2): softmax(T(x'))_y ** beta, no gradient."""
    return F.softmax(t_adv.detach(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


def iad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
             t_nat: torch.Tensor | None = None, t_adv: torch.Tensor | None = None,
             t_std_adv: torch.Tensor | None = None, variant: str = "I", alpha: float = 1.0, alpha1: float = 0.5,
             alpha2: float = 0.25, tau: float = 1.0) -> torch.Tensor:
    """IAD (Zhu et al. 2022; methods.md 2.2-2.3); batchmean KLs; ``w=None`` means before
    ``begin`` (no introspection term, teacher fully trusted).  The self target S(x) is *not*
    detached, as in the official code.

    IAD-I:  alpha tau^2 KL(T^tau(x) || S^tau(x')) + alpha (1/B) sum (1 - w) KL(S(x) || S(x'))
            + (1 - alpha) CE(S(x), y)                              (teacher term not weighted)
    IAD-II: (1 - a1 - a2) CE(S(x'), y) + a1 tau^2 [(1/B) sum w KL(T_a^tau(x') || S^tau(x'))
            + (1/B) sum (1 - w) KL(S(x) || S(x'))] + a2 tau^2 KL(T_s^tau(x') || S^tau(x'))
    """
    intro = None if w is None else ((1 - w) * kl(s_nat, s_adv, reduction="none")).mean()
    if variant.upper() == "I":
        loss = alpha * tau * tau * kl(t_nat.detach(), s_adv, T=tau, reduction="batchmean")
        if intro is not None:
            loss = loss + alpha * intro
        return loss + (1 - alpha) * F.cross_entropy(s_nat, y)
    if variant.upper() == "II":
        per = kl(t_adv.detach(), s_adv, T=tau, reduction="none")
        teach = (per * w).mean() if w is not None else per.mean()
        inner = teach + (intro if intro is not None else 0.0)
        return ((1 - alpha1 - alpha2) * F.cross_entropy(s_adv, y) + alpha1 * tau * tau * inner
                + alpha2 * tau * tau * kl(t_std_adv.detach(), s_adv, T=tau, reduction="batchmean"))
    raise ValueError(f"IAD variant must be I or II, got {variant!r}")


def rslad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, alpha: float = 5 / 6,
               kl_scale: float = 1.0) -> torch.Tensor:
    """RSLAD (Zi et al. 2021; methods.md 3.2): both terms against the teacher's *clean* soft label,
    custom KL with element-wise mean over B*C, temperature 1:
    alpha k(T(x) || S(x')) + (1 - alpha) k(T(x) || S(x)).  ``kl_scale`` = 10 for CIFAR-100."""
    return kl_scale * (alpha * custom_kl(t_nat, s_adv) + (1 - alpha) * custom_kl(t_nat, s_nat))


def mtard_terms(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
                kl_scale: float = 1.0):
    """MTARD's two distillation terms (methods.md 4.2): L_adv = k(T_adv(x') || S(x')),
    L_nat = k(T_nat(x) || S(x)), custom KL, element-wise mean."""
    return kl_scale * custom_kl(t_adv, s_adv), kl_scale * custom_kl(t_nat, s_nat)


def mtard_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
               w_adv: float = 0.5, w_nat: float = 0.5, kl_scale: float = 1.0) -> torch.Tensor:
    """MTARD (Zhao et al. 2022): w_adv L_adv + w_nat L_nat with the current (float) weights;
    ``t_adv`` is the adversarial teacher on x', ``t_nat`` the natural teacher on x."""
    l_adv, l_nat = mtard_terms(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, t_adv=t_adv, kl_scale=kl_scale)
    return w_adv * l_adv + w_nat * l_nat


def mtard_update(w_nat: float, l_adv: float, l_nat: float, l0_adv: float, l0_nat: float, eta: float = 0.025,
                 beta: float = 1.0):
    """MTARD's adaptive-weight step (methods.md 4.2), from loss *values*:
    r = (L / L0) ** beta;  w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat));  w_adv = 1 - w_nat."""
    r_adv, r_nat = (l_adv / l0_adv) ** beta, (l_nat / l0_nat) ** beta
    w_nat = w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))
    return 1.0 - w_nat, w_nat


def adaad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
               alpha: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """AdaAD (Huang et al. 2023; methods.md 5.2): alpha KL(T(x') || S(x')) + (1 - alpha) KL(T(x) || S(x)),
    temperature 1; element-wise mean for CIFAR-10 (``KLDivLoss()``), batchmean for CIFAR-100."""
    return (alpha * kl(t_adv.detach(), s_adv, reduction=reduction)
            + (1 - alpha) * kl(t_nat.detach(), s_nat, reduction=reduction))


def dd_loss(*, s_nat: torch.Tensor, y: torch.Tensor | None = None, t_nat: torch.Tensor | None = None,
            T: float = 100.0) -> torch.Tensor:
    """Defensive distillation (Papernot et al. 2016; methods.md 8.1): mean CE between the target
    q and softmax(Z / T); q is one-hot (training the teacher) or softmax(T(x) / T) from the
    teacher (training the student).  Models are tested at T = 1."""
    log_q = F.log_softmax(s_nat / T, dim=1)
    if t_nat is not None:
        target = F.softmax(t_nat.detach() / T, dim=1)
        return -(target * log_q).sum(1).mean()
    return F.nll_loss(log_q, y)


def takd_loss(*, s_nat: torch.Tensor, t_nat: torch.Tensor, y: torch.Tensor, lam: float = 0.5,
              T: float = 5.0) -> torch.Tensor:
    """KD as in TAKD (Mirzadeh et al. 2019; methods.md 8.2):
    (1 - lambda) CE(S(x), y) + lambda T^2 KL(T^T(x) || S^T(x)) with element-wise mean."""
    return (1 - lam) * F.cross_entropy(s_nat, y) + lam * T * T * kl(t_nat.detach(), s_nat, T=T, reduction="mean")
