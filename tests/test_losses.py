"""Loss functions against hand-computed values (methods.md section 12 worked numbers)."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench import losses

S = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)


def test_kl_reductions_worked_numbers():
    per = losses.kl(T, S, reduction="none")
    assert per.tolist() == pytest.approx([1.15042077, 0.64269901], abs=1e-8)
    assert losses.kl(T, S, reduction="sum").item() == pytest.approx(1.79311977, abs=1e-8)
    assert losses.kl(T, S, reduction="batchmean").item() == pytest.approx(0.89655989, abs=1e-8)
    assert losses.kl(T, S, reduction="mean").item() == pytest.approx(0.29885330, abs=1e-8)


def test_kl_matches_torch_kldivloss_and_temperature():
    for red in ("batchmean", "mean", "sum"):
        ref = F.kl_div(F.log_softmax(S / 4, 1), F.softmax(T / 4, 1), reduction=red)
        assert losses.kl(T, S, T=4, reduction=red).item() == pytest.approx(ref.item(), rel=1e-12)


def _ce(logits, y):
    return sum(-logits[i][y[i]] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(len(y))) / len(y)


def test_natural_and_pgd_at_are_mean_ce():
    y = torch.tensor([2, 0])
    expect = _ce(S.tolist(), [2, 0])
    assert losses.natural_loss(s_nat=S, y=y).item() == pytest.approx(expect, abs=1e-10)
    assert losses.pgd_at_loss(s_adv=S, y=y).item() == pytest.approx(expect, abs=1e-10)


def test_trades_value_and_undetached_target():
    y = torch.tensor([0, 2])
    # TRADES with s_nat = T, s_adv = S: CE(T, y) + 6 * batchmean KL(T || S)
    expect = _ce(T.tolist(), [0, 2]) + 6 * 0.89655989
    t = T.clone().requires_grad_(True)
    val = losses.trades_loss(s_nat=t, s_adv=S, y=y, beta=6.0)
    assert val.item() == pytest.approx(expect, abs=1e-7)
    val.backward()
    # the KL target is not detached: the gradient w.r.t. s_nat includes the KL term
    t2 = T.clone().requires_grad_(True)
    F.cross_entropy(t2, y).backward()
    assert not torch.allclose(t.grad, t2.grad)
    assert losses.trades_loss(s_nat=T, s_adv=S, y=y, beta=0).item() == pytest.approx(_ce(T.tolist(), [0, 2]))


# ---- distillation objectives (methods.md section 12 worked numbers) ----------------------

def test_ard_worked_number_and_alpha():
    y = torch.tensor([0, 2])
    # student logits on x' = S, teacher on x = T: alpha tau^2 element-wise-mean KL at tau = 30
    assert losses.ard_loss(s_nat=S, s_adv=S, t_nat=T, y=y, alpha=1.0, tau=30.0).item() == \
        pytest.approx(0.34715505, abs=1e-8)
    assert losses.kl(T, S, T=30, reduction="batchmean").item() * 900 == pytest.approx(1.04146514, abs=1e-7)
    mixed = losses.ard_loss(s_nat=T, s_adv=S, t_nat=T, y=y, alpha=0.5, tau=30.0)
    assert mixed.item() == pytest.approx(0.5 * 0.34715505 + 0.5 * _ce(T.tolist(), [0, 2]), abs=1e-7)


def test_custom_kl_rslad_and_cifar100_scale():
    assert losses.custom_kl(T, S).item() == pytest.approx(0.29886330, abs=1e-8)
    assert losses.rslad_loss(s_nat=S, s_adv=S, t_nat=T, alpha=5 / 6, kl_scale=10).item() == \
        pytest.approx(2.98863295, abs=1e-7)
    # 5/6 on the adversarial term, 1/6 on the clean term, both against the teacher's clean label
    val = losses.rslad_loss(s_nat=T, s_adv=S, t_nat=T, alpha=5 / 6, kl_scale=1.0).item()
    assert val == pytest.approx(5 / 6 * 0.29886330 + 1 / 6 * losses.custom_kl(T, T).item(), abs=1e-8)
    # gradient equals true KL's (only the value differs)
    a, b = S.clone().requires_grad_(True), S.clone().requires_grad_(True)
    losses.custom_kl(T, a).backward()
    losses.kl(T, b, reduction="mean").backward()
    assert torch.allclose(a.grad, b.grad)


def test_mtard_update_and_loss():
    w_adv, w_nat = losses.mtard_update(0.5, 0.8, 0.4, 1.0, 1.0, eta=0.025, beta=1.0)
    assert (w_nat, w_adv) == (pytest.approx(0.49583333, abs=1e-8), pytest.approx(0.50416667, abs=1e-8))
    assert losses.mtard_update(0.5, 2.0, 3.0, 2.0, 3.0, eta=0.025, beta=1.0)[1] == 0.5  # first step: both ratios 1
    l_adv, l_nat = losses.mtard_terms(s_nat=T, s_adv=S, t_nat=S, t_adv=T, kl_scale=1.0)
    loss = losses.mtard_loss(s_nat=T, s_adv=S, t_nat=S, t_adv=T, w_adv=0.7, w_nat=0.3, kl_scale=1.0)
    assert loss.item() == pytest.approx(0.7 * l_adv.item() + 0.3 * l_nat.item())
    assert l_adv.item() == pytest.approx(0.29886330, abs=1e-8)


def test_iad_trust_and_losses():
    p = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)
    w = losses.iad_trust(p.log(), torch.tensor([0, 0, 0]))
    assert w.tolist() == pytest.approx([0.98951926, 0.93303299, 0.79432823], abs=1e-8)
    y = torch.tensor([0, 2])
    s_nat = torch.tensor([[0.2, 0.1, 0.4], [1.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    wt = torch.tensor([0.9, 0.5], dtype=torch.float64)
    # IAD-I (tau = 1, alpha = 1): batchmean KL(T || S') + mean((1 - w) KL(S(x) || S'))
    val = losses.iad_loss(s_nat=s_nat, s_adv=S, y=y, w=wt, t_nat=T, variant="I", alpha=1.0, tau=1.0)
    intro = (0.1 * losses.kl(s_nat[:1], S[:1], reduction="sum") + 0.5 * losses.kl(s_nat[1:], S[1:], reduction="sum")) / 2
    assert val.item() == pytest.approx(0.89655989 + intro.item(), abs=1e-7)
    val.backward()
    assert s_nat.grad.abs().sum() > 0  # the self target S(x) is not detached
    # before `begin` (w = None): plain batchmean KD, no introspection term
    before = losses.iad_loss(s_nat=S, s_adv=S, y=y, t_nat=T, variant="I", alpha=1.0, tau=1.0)
    assert before.item() == pytest.approx(0.89655989, abs=1e-8)
    # IAD-II: the adversarial teacher's term weighted by w, the standard teacher's not
    v2 = losses.iad_loss(s_nat=S, s_adv=S, y=y, w=torch.ones(2, dtype=torch.float64), t_adv=T, t_std_adv=T,
                         variant="II", alpha1=0.5, alpha2=0.25, tau=1.0)
    assert v2.item() == pytest.approx(0.25 * _ce(S.tolist(), [0, 2]) + 0.75 * 0.89655989, abs=1e-7)


def test_adaad_reductions():
    y = torch.tensor([0, 2])
    assert losses.adaad_loss(s_nat=S, s_adv=S, t_nat=T, t_adv=T, alpha=1.0).item() == \
        pytest.approx(0.29885330, abs=1e-8)
    assert losses.adaad_loss(s_nat=S, s_adv=S, t_nat=T, t_adv=T, alpha=1.0, reduction="batchmean").item() == \
        pytest.approx(0.89655989, abs=1e-8)
    half = losses.adaad_loss(s_nat=T, s_adv=S, t_nat=T, t_adv=T, alpha=0.5).item()
    assert half == pytest.approx(0.5 * 0.29885330, abs=1e-8)  # KL(T || T) = 0
    del y


def test_dd_and_takd():
    y = torch.tensor([0, 2])
    # hard labels at T: CE of softmax(Z / T)
    assert losses.dd_loss(s_nat=S, y=y, T=2).item() == pytest.approx(_ce((S / 2).tolist(), [0, 2]), abs=1e-10)
    # soft labels: cross-entropy with the teacher's softmax at T = KL + teacher entropy
    soft = losses.dd_loss(s_nat=S, t_nat=T, T=1).item()
    ent = -(F.softmax(T, 1) * F.log_softmax(T, 1)).sum(1).mean().item()
    assert soft == pytest.approx(0.89655989 + ent, abs=1e-7)
    val = losses.takd_loss(s_nat=S, t_nat=T, y=y, lam=0.25, T=30)
    assert val.item() == pytest.approx(0.75 * _ce(S.tolist(), [0, 2]) + 0.25 * 0.34715505, abs=1e-7)

