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
    val = losses.trades_loss(s_nat=t, s_adv=S, y=y)
    assert val.item() == pytest.approx(expect, abs=1e-7)
    val.backward()
    # the KL target is not detached: the gradient w.r.t. s_nat includes the KL term
    t2 = T.clone().requires_grad_(True)
    F.cross_entropy(t2, y).backward()
    assert not torch.allclose(t.grad, t2.grad)
    assert losses.trades_loss(s_nat=T, s_adv=S, y=y, beta=0).item() == pytest.approx(_ce(T.tolist(), [0, 2]))
