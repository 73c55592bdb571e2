"""Minimal-perturbation attacks on the linear model of linear_case.py, whose exact minimal L0, L2 and
L-inf distances are known in closed form (kdbench.attacks.cw and the distances evaluate reports)."""
import math

import pytest
import torch

from kdbench.attacks.cw import cw_l0, cw_l2, cw_linf, l0_pixels
from kdbench.evaluation import evaluate
from kdbench.evaluation.metrics import robust_accuracy_at
from linear_case import make_case

case = pytest.fixture(scope="module")(make_case)


def test_cw_l2_finds_the_hyperplane(case):
    model, x, y, l2, _, _ = case
    xa, ok = cw_l2(model, x, y, steps=200, binary_steps=9)
    d = (xa - x).flatten(1).norm(dim=1)
    assert ok.all() and (model(xa).argmax(1) != y).all()
    assert (d >= l2 * (1 - 1e-4)).all()  # never below the exact distance
    assert (d / l2).mean() < 1.10  # close to it


def test_cw_linf_finds_the_hyperplane(case):
    model, x, y, _, linf, _ = case
    xa, ok = cw_linf(model, x, y, steps=100, c0=0.01)
    d = (xa - x).flatten(1).abs().max(1).values
    assert ok.all() and (model(xa).argmax(1) != y).all()
    assert (d >= linf * (1 - 1e-4)).all()
    assert (d / linf).mean() < 1.25  # tau shrinks by 0.9 per round: within ~1/0.9 of the optimum


def test_cw_l0_counts_pixels_and_is_near_exact(case):
    model, x, y, _, _, l0 = case
    xa, ok = cw_l0(model, x, y, steps=100, c0=0.1)  # a higher start constant: a shorter doubling ladder
    n = l0_pixels(xa - x)
    assert ok.all() and (model(xa).argmax(1) != y).all()
    assert (n >= l0).all()
    assert (n.float() - l0.float()).mean() <= 1.5
    # a pixel with any changed channel counts once
    delta = torch.zeros(1, 3, 2, 2)
    delta[0, :, 0, 0] = 0.5
    delta[0, 1, 1, 1] = 0.2
    assert l0_pixels(delta).item() == 2


def test_evaluate_reports_rho_adv_and_derived_accuracy(case):
    model, x, y, l2, linf, _ = case
    r = evaluate(model, x, y, attacks=["cw-l2:steps=200", "cw-linf-min:steps=100,c0=0.01"], eps=0.05,
                 device="cpu", checks=False).to_dict()
    mp = r["min_perturbation"]["cw-l2:steps=200"]
    assert mp["norm"] == "L2" and mp["success_rate"] == 1.0
    assert mp["mean"] == pytest.approx(l2.mean().item(), rel=0.1)
    dl = r["per_sample"]["min_distance"]["cw-linf-min:steps=100,c0=0.01"]
    assert len(dl) == len(y) and all(math.isfinite(v) for v in dl)
    # robust accuracy at eps derived from distances equals the exact one up to the attack's slack
    exact = (linf > 0.05).float().mean().item()
    assert robust_accuracy_at(dl, 0.05) == pytest.approx(exact, abs=2 / len(y))
