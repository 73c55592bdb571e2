"""Training objectives as pure functions of logits (testable on tensors).

Keyword arguments follow one convention: ``s_nat``/``s_adv`` are the student's logits on the
clean x and the adversarial x', ``t_nat``/``t_adv`` the teacher's, ``y`` the labels; then each
method's hyperparameters under its paper's names, defaulting to the official CIFAR-10 code
(reductions included; see docs/methods.md).

KL convention (docs/methods.md §0.1): ``kl(p_logits, q_logits)`` is KL(softmax(p) || softmax(q)),
the first argument being the target (teacher) distribution.
"""
from __future__ import annotations

import math

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
    """PGD-AT (Madry et al. 2018, Eq. 2.1; docs/methods.md §10.1): mean CE on the adversarial inputs."""
    return F.cross_entropy(s_adv, y)


def trades_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES (Zhang et al. 2019, Eq. 5; docs/methods.md §10.2):
    CE(f(x), y) + beta * (1/B) sum_b KL(softmax(f(x_b)) || softmax(f(x'_b))).

    The target softmax(f(x)) is *not* detached, as in the official code."""
    return F.cross_entropy(s_nat, y) + beta * kl(s_nat, s_adv, reduction="batchmean")


# ------------------------------------------------------------------------------------------
# Distillation objectives (Distillation methods I; methods.md sections 1-5, 8)
# ------------------------------------------------------------------------------------------

def custom_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The "custom KL" of RSLAD and MTARD (docs/methods.md §0.1): per element
    p * (log(p + 1e-5) - log q), with p = softmax(teacher) detached.  Same gradient as KL; the
    value differs by sum p log((p + 1e-5) / p), which matters for MTARD's adaptive weights."""
    p = F.softmax(p_logits, dim=1).detach()
    terms = p * (torch.log(p + 1e-5) - F.log_softmax(q_logits, dim=1))
    return reduce_terms(terms, reduction)


def ard_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, y: torch.Tensor,
             alpha: float, tau: float) -> torch.Tensor:
    """ARD (Goldblum et al. 2020, Eq. 4; docs/methods.md §1.2):
    alpha tau^2 KL(T^tau(x) || S^tau(x')) [element-wise mean over B*C, ``KLDivLoss()``]
    + (1 - alpha) CE(S(x), y) [at temperature 1].  Official defaults alpha = 1, tau = 30."""
    soft = kl(t_nat.detach(), s_adv, T=tau, reduction="mean") * (alpha * tau * tau)
    return soft + (1 - alpha) * F.cross_entropy(s_nat, y)


def iad_trust(t_adv: torch.Tensor, y: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """IAD's per-sample trust in the teacher (docs/methods.md §2.2): softmax(T(x'))_y ** beta, no gradient."""
    return F.softmax(t_adv.detach(), dim=1).gather(1, y[:, None]).squeeze(1).pow(beta)


def iad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
             t_nat: torch.Tensor | None = None, t_adv: torch.Tensor | None = None,
             t_std_adv: torch.Tensor | None = None, variant: str, tau: float, alpha: float | None = None,
             alpha1: float | None = None, alpha2: float | None = None) -> torch.Tensor:
    """IAD (Zhu et al. 2022; docs/methods.md §2.2-2.3); batchmean KLs; ``w=None`` means before
    ``begin`` (no introspection term, teacher fully trusted).  The self target S(x) is *not*
    detached, as in the official code.  IAD-I takes ``alpha``, IAD-II ``alpha1`` and ``alpha2``.

    IAD-I:  alpha tau^2 KL(T^tau(x) || S^tau(x')) + alpha (1/B) sum (1 - w) KL(S(x) || S(x'))
            + (1 - alpha) CE(S(x), y)                              (teacher term not weighted)
    IAD-II: (1 - a1 - a2) CE(S(x'), y) + a1 tau^2 [(1/B) sum w KL(T_a^tau(x') || S^tau(x'))
            + (1/B) sum (1 - w) KL(S(x) || S(x'))] + a2 tau^2 KL(T_s^tau(x') || S^tau(x'))
    """
    intro = None if w is None else ((1 - w) * kl(s_nat, s_adv, reduction="none")).mean()
    if variant.upper() == "I":
        if alpha is None:
            raise ValueError("IAD-I needs alpha")
        loss = alpha * tau * tau * kl(t_nat.detach(), s_adv, T=tau, reduction="batchmean")
        if intro is not None:
            loss = loss + alpha * intro
        return loss + (1 - alpha) * F.cross_entropy(s_nat, y)
    if variant.upper() == "II":
        if alpha1 is None or alpha2 is None:
            raise ValueError("IAD-II needs alpha1 and alpha2")
        per = kl(t_adv.detach(), s_adv, T=tau, reduction="none")
        teach = (per * w).mean() if w is not None else per.mean()
        inner = teach + (intro if intro is not None else 0.0)
        return ((1 - alpha1 - alpha2) * F.cross_entropy(s_adv, y) + alpha1 * tau * tau * inner
                + alpha2 * tau * tau * kl(t_std_adv.detach(), s_adv, T=tau, reduction="batchmean"))
    raise ValueError(f"IAD variant must be I or II, got {variant!r}")


def rslad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, alpha: float,
               kl_scale: float) -> torch.Tensor:
    """RSLAD (Zi et al. 2021; docs/methods.md §3.2): both terms against the teacher's *clean* soft label,
    custom KL with element-wise mean over B*C, temperature 1:
    alpha k(T(x) || S(x')) + (1 - alpha) k(T(x) || S(x)).  ``kl_scale`` = 10 for CIFAR-100."""
    return kl_scale * (alpha * custom_kl(t_nat, s_adv) + (1 - alpha) * custom_kl(t_nat, s_nat))


def mtard_terms(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
                kl_scale: float):
    """MTARD's two distillation terms (docs/methods.md §4.2): L_adv = k(T_adv(x') || S(x')),
    L_nat = k(T_nat(x) || S(x)), custom KL, element-wise mean."""
    return kl_scale * custom_kl(t_adv, s_adv), kl_scale * custom_kl(t_nat, s_nat)


def mtard_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
               w_adv: float, w_nat: float, kl_scale: float) -> torch.Tensor:
    """MTARD (Zhao et al. 2022): w_adv L_adv + w_nat L_nat with the current (float) weights;
    ``t_adv`` is the adversarial teacher on x', ``t_nat`` the natural teacher on x."""
    l_adv, l_nat = mtard_terms(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, t_adv=t_adv, kl_scale=kl_scale)
    return w_adv * l_adv + w_nat * l_nat


def mtard_update(w_nat: float, l_adv: float, l_nat: float, l0_adv: float, l0_nat: float, eta: float,
                 beta: float):
    """MTARD's adaptive-weight step (docs/methods.md §4.2), from loss *values*:
    r = (L / L0) ** beta;  w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat));  w_adv = 1 - w_nat."""
    r_adv, r_nat = (l_adv / l0_adv) ** beta, (l_nat / l0_nat) ** beta
    w_nat = w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))
    return 1.0 - w_nat, w_nat


def adaad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
               alpha: float, reduction: str = "mean") -> torch.Tensor:
    """AdaAD (Huang et al. 2023; docs/methods.md §5.2): alpha KL(T(x') || S(x')) + (1 - alpha) KL(T(x) || S(x)),
    temperature 1; element-wise mean for CIFAR-10 (``KLDivLoss()``), batchmean for CIFAR-100."""
    return (alpha * kl(t_adv.detach(), s_adv, reduction=reduction)
            + (1 - alpha) * kl(t_nat.detach(), s_nat, reduction=reduction))


def dd_loss(*, s_nat: torch.Tensor, y: torch.Tensor | None = None, t_nat: torch.Tensor | None = None,
            T: float) -> torch.Tensor:
    """Defensive distillation (Papernot et al. 2016; docs/methods.md §8.1): mean CE between the target
    q and softmax(Z / T); q is one-hot (training the teacher) or softmax(T(x) / T) from the
    teacher (training the student).  Models are tested at T = 1."""
    log_q = F.log_softmax(s_nat / T, dim=1)
    if t_nat is not None:
        target = F.softmax(t_nat.detach() / T, dim=1)
        return -(target * log_q).sum(1).mean()
    return F.nll_loss(log_q, y)


def takd_loss(*, s_nat: torch.Tensor, t_nat: torch.Tensor, y: torch.Tensor, lam: float,
              T: float) -> torch.Tensor:
    """KD as in TAKD (Mirzadeh et al. 2019; docs/methods.md §8.2):
    (1 - lambda) CE(S(x), y) + lambda T^2 KL(T^T(x) || S^T(x)) with element-wise mean."""
    return (1 - lam) * F.cross_entropy(s_nat, y) + lam * T * T * kl(t_nat.detach(), s_nat, T=T, reduction="mean")


# ------------------------------------------------------------------------------------------
# Distillation objectives II (DARHT, SmaraAD, AGKD-BML; methods.md sections 6, 7, 9)
# ------------------------------------------------------------------------------------------

def darht_weights(teachers, y: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """DARHT's teacher weights from each teacher's mean cross-entropy on the batch (seed 001,
    section 3): w_j = exp(-CE_j) / sum_j' exp(-CE_j') (the paper) or exp(-CE_j) unnormalised
    (the released code, docs/methods.md §6.3).  No gradient."""
    ce = torch.stack([F.cross_entropy(t.detach().float(), y) for t in teachers])
    return torch.softmax(-ce, 0) if normalise else torch.exp(-ce)


def darht_loss(*, s_adv: torch.Tensor, stf: torch.Tensor, t_adv, y: torch.Tensor, ce: float,
               kd: float, normalise: bool, kl_direction: str) -> torch.Tensor:
    """DARHT (seed 001, Eq. 1): ce * CE(S(x~), y) + kd * sum_j w_j KL_j on the batch x~ actually
    used (clean or adversarial, so ``s_adv``/``t_adv`` name whichever it was).

    ``stf`` is the student-teacher feature map, B x (J*C) or B x J x C (teacher j's block is
    ``stf[:, j]``); ``t_adv`` the list of the J teachers' logits.  KL_j is batchmean at temperature 1:
    KL(softmax(S^(T_j)) || softmax(T_j)) for ``kl_direction="student"`` (the paper's formula) or
    KL(softmax(T_j) || softmax(S^(T_j))) for ``"teacher"`` (the released code).  The weights come
    from :func:`darht_weights`."""
    J = len(t_adv)
    stf = stf.reshape(stf.shape[0], J, -1)
    w = darht_weights(t_adv, y, normalise)
    terms = []
    for j, t in enumerate(t_adv):
        if kl_direction == "student":
            terms.append(kl(stf[:, j], t.detach(), reduction="batchmean"))
        elif kl_direction == "teacher":
            terms.append(kl(t.detach(), stf[:, j], reduction="batchmean"))
        else:
            raise ValueError(f"kl_direction must be 'student' or 'teacher', got {kl_direction!r}")
    loss = kd * (w * torch.stack(terms)).sum()
    if ce:
        loss = loss + ce * F.cross_entropy(s_adv, y)
    return loss


def soft_rank(v: torch.Tensor, gamma: float = 1000.0) -> torch.Tensor:
    """Differentiable descending rank over the last dimension (SmaraAD Eq. 4; docs/methods.md §7.1):
    r_i = sum_j sigmoid(gamma (v_j - v_i)); the largest entry gets about 1/2, the smallest n - 1/2."""
    return torch.sigmoid(gamma * (v.unsqueeze(-2) - v.unsqueeze(-1))).sum(-1)


def soft_spearman(u: torch.Tensor, v: torch.Tensor, gamma: float = 1000.0) -> torch.Tensor:
    """Spearman correlation of soft ranks over the last dimension (the classes of one sample;
    SmaraAD Eq. 2-3): rho = 1 - 6 sum_i (r_i(u) - r_i(v))^2 / (n (n^2 - 1)).  Returns one rho per row."""
    n = u.shape[-1]
    d = soft_rank(u, gamma) - soft_rank(v, gamma)
    return 1 - 6 * (d * d).sum(-1) / (n * (n * n - 1))


def cam(fmap: torch.Tensor, weight: torch.Tensor, cls: torch.Tensor, size=None, norm: str = "minmax"
        ) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016; SmaraAD Eq. 6): CAM_c = sum_k w_c^k A^k over the
    channels k of the last convolutional feature map ``fmap`` (B x K x h x w), with ``weight`` the
    classifier's C x K matrix and ``cls`` one class per sample.  ``size`` resizes bilinearly
    (SmaraAD's G); ``norm="minmax"`` scales each map to [0, 1] (kdbench's choice: it makes maps of
    different architectures comparable; ``"none"`` keeps raw values).  Returns B x h x w."""
    m = torch.einsum("bkhw,bk->bhw", fmap, weight[cls].to(fmap.dtype))
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
    return minmax(m) if norm == "minmax" else m


def minmax(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample min-max scaling of B x ... maps to [0, 1] (a constant map becomes 0)."""
    flat = m.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = (flat - lo).max(1, keepdim=True).values
    return ((flat - lo) / (hi + eps)).view_as(m)


def align_loss(cam_s: torch.Tensor, cam_t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """SmaraAD's L_align (Eq. 7): mean squared difference of two CAMs over the W x H map,
    resized to the teacher's size when they differ; ``reduction="none"`` gives one value per sample.
    Nothing is detached (the inner maximisation differentiates through both maps)."""
    if cam_s.shape[-2:] != cam_t.shape[-2:]:
        cam_s = F.interpolate(cam_s.unsqueeze(1), size=cam_t.shape[-2:], mode="bilinear",
                              align_corners=False).squeeze(1)
    per = (cam_s - cam_t).pow(2).flatten(1).mean(1)
    return per if reduction == "none" else per.mean()


def slack_matching(s: torch.Tensor, t: torch.Tensor, gamma: float = 1000.0, reduction: str = "mean"
                   ) -> torch.Tensor:
    """SmaraAD's L_sm (Eq. 5): -rho(softmax(S), softmax(T)) per sample, on the predicted
    probabilities; the teacher side is detached."""
    per = -soft_spearman(F.softmax(s, dim=1), F.softmax(t.detach(), dim=1), gamma)
    return per if reduction == "none" else per.mean()


def smaraad_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_nat: torch.Tensor, t_adv: torch.Tensor,
                 cam_s_nat: torch.Tensor | None = None, cam_s_adv: torch.Tensor, cam_t_nat: torch.Tensor | None = None,
                 cam_t_adv: torch.Tensor, c: float, alpha: float, gamma: float) -> torch.Tensor:
    """SmaraAD (seed 002, Eq. 9): c + (1 - alpha)(L_sm(x) + L_align(x)) + alpha (L_sm(x') + L_align(x')),
    with c = 2 keeping the loss positive and alpha = 1 (only the adversarial terms carry weight)."""
    loss = c + alpha * (slack_matching(s_adv, t_adv, gamma) + align_loss(cam_s_adv, cam_t_adv))
    if alpha != 1:
        loss = loss + (1 - alpha) * (slack_matching(s_nat, t_nat, gamma) + align_loss(cam_s_nat, cam_t_nat))
    return loss


def entropy_weight(logits: torch.Tensor) -> torch.Tensor:
    """SmaraAD++'s sample weight (seed 002, section 3.4): w = clamp(1 - H(P) / log C, 0, 1), no gradient."""
    p = F.softmax(logits.detach().float(), dim=1)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return (1 - h / math.log(logits.shape[1])).clamp(0, 1)


def smaraadpp_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, t_adv: torch.Tensor, y: torch.Tensor,
                   cam_s_adv: torch.Tensor, cam_t_adv: torch.Tensor, lam: float, gamma: float,
                   entropy_of: str, self_term: str) -> torch.Tensor:
    """SmaraAD++ (seed 002, Eq. 10), per sample then averaged:
    g w (L_sm(x') + L_align(x')) + (1 - g) (L_self + CE(S(x), y)),  g = P_T(y | x')^lambda.

    ``w`` is :func:`entropy_weight` of the teacher on x' (``entropy_of="student"``: the student's).
    L_self is -rho(S(x), S(x')) (``self_term="intent"``, slack matching between the student's clean
    and adversarial outputs) or +rho(S(x), S(x')) as printed (``"printed"``, which rewards
    decorrelation); docs/methods.md gives the reasoning."""
    g = iad_trust(t_adv, y, lam)
    w = entropy_weight(t_adv if entropy_of == "teacher" else s_adv)
    teach = slack_matching(s_adv, t_adv, gamma, reduction="none") + align_loss(cam_s_adv, cam_t_adv, "none")
    rho = soft_spearman(F.softmax(s_nat, dim=1), F.softmax(s_adv, dim=1), gamma)
    if self_term == "intent":
        self_ = -rho
    elif self_term == "printed":
        self_ = rho
    else:
        raise ValueError(f"self_term must be 'intent' or 'printed', got {self_term!r}")
    own = self_ + F.cross_entropy(s_nat, y, reduction="none")
    return (g * w * teach + (1 - g) * own).mean()


def attention_map(fmap: torch.Tensor) -> torch.Tensor:
    """AGKD-BML's class-irrelevant attention map (docs/methods.md §9.3): the channel sum of the last
    feature map, min-max scaled per sample to [0, 1].  B x K x h x w -> B x h x w."""
    return minmax(fmap.sum(1))


def label_smoothing_ce(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.5) -> torch.Tensor:
    """AGKD-BML's label-smoothed CE (docs/methods.md §9.3): target 1 - s on y and s / (C - 1) on every
    other class (not PyTorch's ``label_smoothing``, which spreads s over all C classes)."""
    C = logits.shape[1]
    target = torch.full_like(logits, smoothing / (C - 1)).scatter(1, y[:, None], 1 - smoothing)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def mart_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020) as in AGKD-BML's ``utils.py`` (docs/methods.md §9.3):
    NLL(log(1.0001 - p_adv + 1e-12), y~) with y~ the top non-true class of p_adv, plus
    beta (1/B) sum KL(p_nat || p_adv) (1.0000001 - p_nat,y), gradient through both distributions."""
    p_adv = F.softmax(s_adv, dim=1)
    p_nat = F.softmax(s_nat, dim=1)
    top2 = p_adv.argsort(1)[:, -2:]
    y_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), y_wrong)
    kl_per = (p_nat * (torch.log(p_nat + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
    true_nat = p_nat.gather(1, y[:, None]).squeeze(1)
    return bce + beta * (kl_per * (1.0000001 - true_nat)).mean()


def angular_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D(u, v) = 1 - |cos(u, v)| with the cosine clipped at 1 (AGKD-BML; docs/methods.md §9.3)."""
    cos = F.cosine_similarity(u, v, dim=1, eps=1e-8).clamp(max=1.0)
    return 1 - cos.abs()


def bml_triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.03,
                lam2: float = 1e-3) -> torch.Tensor:
    """AGKD-BML's bi-directional angular triplet (docs/methods.md §9.3): mean_b max(0, m + D(a, p) - D(a, n))
    + lam2 (mean(a^2) + mean(p^2) + mean(n^2))."""
    hinge = F.relu(margin + angular_distance(anchor, positive) - angular_distance(anchor, negative)).mean()
    return hinge + lam2 * (anchor.pow(2).mean() + positive.pow(2).mean() + negative.pow(2).mean())


def agkd_bml_loss(*, s_nat: torch.Tensor, s_adv: torch.Tensor, y: torch.Tensor, fm_s_adv: torch.Tensor,
                  fm_t_nat: torch.Tensor, fm_s_back: torch.Tensor, fm_t_back: torch.Tensor, e_nat: torch.Tensor,
                  e_adv: torch.Tensor, e_back: torch.Tensor, smoothing: float, beta: float,
                  lam1: float, margin: float, lam2: float) -> torch.Tensor:
    """AGKD-BML (Wang et al. 2021; docs/methods.md §9.3):
    CE_ls(S(x1'), y) + MART(S(x1), S(x1'), y) + |A(F_S(x1')) - A(F_T(x1))|_1 + |A(F_S(x2')) - A(F_T(x2))|_1
    + lam1 * triplet(e(x1'), e(x1), e(x2')).

    ``fm_*`` are last feature maps (student on x1' and the backward x2', teacher on x1 and x2,
    the teacher's detached), ``e_*`` the student's penultimate embeddings; L1 terms are means over
    B x h x w (the student's maps are resized to the teacher's when they differ)."""

    def att_l1(fs, ft):
        a_s, a_t = attention_map(fs), attention_map(ft.detach())
        if a_s.shape[-2:] != a_t.shape[-2:]:
            a_s = F.interpolate(a_s.unsqueeze(1), size=a_t.shape[-2:], mode="bilinear",
                                align_corners=False).squeeze(1)
        return (a_s - a_t).abs().mean()

    return (label_smoothing_ce(s_adv, y, smoothing) + mart_loss(s_nat=s_nat, s_adv=s_adv, y=y, beta=beta)
            + att_l1(fm_s_adv, fm_t_nat) + att_l1(fm_s_back, fm_t_back)
            + lam1 * bml_triplet(e_adv, e_nat, e_back, margin, lam2))
