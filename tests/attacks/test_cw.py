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


def _towards_boundary(model, x, y, scale):
    """x moved by ``scale`` x the exact L-inf distance, every pixel towards the hyperplane."""
    w = model.w.detach()
    z = x.flatten(1) @ w
    step = (z.abs() / w.abs().sum() * scale)[:, None] * -torch.sign(z)[:, None] * torch.sign(w)[None]
    return (x.flatten(1) + step).clamp(0, 1).view_as(x)


def test_cw_linf_from_a_start_is_never_above_it(case):
    model, x, y, _, linf, _ = case
    start = _towards_boundary(model, x, y, 1.03)  # adversarial, 3 % above the exact distance
    assert (model(start).argmax(1) != y).all()
    xa, ok = cw_linf(model, x, y, steps=100, c0=0.01, start=start)
    d = (xa - x).flatten(1).abs().max(1).values
    assert ok.all() and (model(xa).argmax(1) != y).all()
    assert (d >= linf * (1 - 1e-4)).all()
    assert (d <= (start - x).flatten(1).abs().max(1).values + 1e-6).all()
    # a start that is not adversarial (x itself) is ignored: the reference start
    xb, okb = cw_linf(model, x, y, steps=100, c0=0.01, start=x.clone())
    assert okb.all() and ((xb - x).flatten(1).abs().max(1).values / linf).mean() < 1.25


def test_cw_linf_reference_schedule_and_the_cheap_one_agree(case):
    """abort_early=False, patience=0 is methods.md 11.3's schedule (every constant runs all its
    steps); the default's hopeless-constant cuts reach the same distances for fewer passes."""
    model, x, y, _, linf, _ = case
    calls = []
    counted = lambda z: (calls.append(len(z)), model(z))[1]  # noqa: E731
    xr, okr = cw_linf(counted, x, y, steps=100, c0=0.01, abort_early=False)
    ref_images = sum(calls)
    calls.clear()
    xc, okc = cw_linf(counted, x, y, steps=100, c0=0.01)
    dr, dc = ((v - x).flatten(1).abs().max(1).values / linf for v in (xr, xc))
    assert okr.all() and okc.all()
    assert dc.mean() <= dr.mean() * 1.02
    assert sum(calls) < ref_images


def test_cw_l0_from_a_start_never_changes_more_pixels(case):
    model, x, y, _, _, l0 = case
    w = model.w.detach()
    z = x.flatten(1) @ w
    # the l0 + 2 most effective pixels pushed to the box edge: adversarial, 2 pixels more than needed
    toward = (-torch.sign(z)[:, None] * torch.sign(w)[None]) > 0
    flat = x.flatten(1)
    room = torch.where(toward, 1 - flat, flat)
    rank = (w.abs()[None] * room).argsort(1, descending=True).argsort(1)
    push = rank < (l0 + 2)[:, None]
    start = torch.where(push, toward.float(), flat).view_as(x)
    assert (model(start).argmax(1) != y).all()
    xa, ok = cw_l0(model, x, y, steps=100, c0=0.1, start=start)
    n = l0_pixels(xa - x)
    assert ok.all() and (model(xa).argmax(1) != y).all()
    assert (n >= l0).all() and (n <= l0 + 2).all()
    assert (n.float() - l0.float()).mean() <= 1.5


def test_cw_init_must_be_a_minimal_attack_of_the_same_norm():
    from kdbench.attacks.registry import build_attack
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="init 'ddn' is not a minimal-perturbation attack in L0"):
        build_attack("cw-l0:init=ddn", 0.1)
    with pytest.raises(KdbenchError, match="patience must be an integer >= 0"):
        build_attack("cw-l0:patience=-1", 0.1)
    assert build_attack("cw-linf-min", 0.1).params["init"] == "min-linf"
    # the hopeless-constant cut only after a warm start: from x the ladder must climb from c0
    assert build_attack("cw-linf-min", 0.1).params["patience"] == 3
    assert build_attack("cw-linf-min:init=none", 0.1).params["patience"] == 0
    assert build_attack("cw-linf-min:init=none,patience=2", 0.1).params["patience"] == 2


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
