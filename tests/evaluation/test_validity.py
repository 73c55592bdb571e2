"""Gradient sensitivity, confidence and the validity flags (kdbench.evaluation.validity)."""
import pytest
import torch
import torch.nn as nn

from conftest import Scaled
from kdbench.evaluation import evaluate


def test_sensitivity_known_gradient():
    """A 1-pixel logistic model: d softmax_1 / dx = p (1 - p) * a, known exactly."""
    a = 3.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    model[1].weight.data = torch.tensor([[0.0], [a]])
    x = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1, 1)
    y = torch.tensor([1, 1, 1])
    r = evaluate(model, x, y, attacks=["fgsm"], eps=0.01, device="cpu", checks=False).to_dict()
    p = torch.sigmoid(a * x.flatten())
    expect = (p * (1 - p) * a).tolist()
    assert r["per_sample"]["sensitivity"] == pytest.approx(expect, rel=1e-5)
    assert r["sensitivity"]["mean"] == pytest.approx(sum(expect) / 3, rel=1e-5)
    assert r["confidence"] == pytest.approx(p.mean().item(), rel=1e-5)  # all correct: mean top probability


def test_saturated_logits_flagged_and_worst_case_unchanged(digits):
    from kdbench.cli.evaluate import DEFAULT_WEIGHTS
    from kdbench.specs import resolve_model

    base = resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model
    kw = dict(dataset=digits, n=100, attacks=["pgd", "cw-linf", "apgd-t"], device="cpu", eps=0.2, checks=False)
    plain = evaluate(base, **kw).to_dict()
    scaled = evaluate(Scaled(base, 10_000.0), **kw).to_dict()
    names = {f["name"] for f in scaled["validity"]["flags"]}
    assert {"zero_gradients", "ce_weaker_than_margin"} <= names
    assert not {"zero_gradients", "ce_weaker_than_margin"} & {f["name"] for f in plain["validity"]["flags"]}
    assert scaled["sensitivity"]["fraction_below_1e-10"] > 0.9
    assert scaled["worst_case"]["robust_accuracy"] == plain["worst_case"]["robust_accuracy"]


def test_probability_outputs_flagged(digits):
    from kdbench.cli.evaluate import DEFAULT_WEIGHTS
    from kdbench.specs import resolve_model

    base = resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model
    r = evaluate(nn.Sequential(base, nn.Softmax(1)), dataset=digits, n=50, attacks=["fgsm"], device="cpu",
                 checks=False).to_dict()
    assert "outputs_are_probabilities" in {f["name"] for f in r["validity"]["flags"]}


def test_budget_checks_on_a_healthy_model(digits):
    from kdbench.cli.evaluate import DEFAULT_WEIGHTS
    from kdbench.specs import resolve_model

    base = resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model
    r = evaluate(base, dataset=digits, n=60, attacks=["pgd"], device="cpu", checks_n=60).to_dict()
    bc = r["validity"]["budget_checks"]
    curve = list(bc["curve"].values())
    assert curve == sorted(curve, reverse=True) and bc["at_large_eps"] == 0.0
    assert not [f for f in r["validity"]["flags"] if f["name"] in ("not_monotone_in_eps", "not_zero_at_large_eps")]
