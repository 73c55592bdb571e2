"""The library minimal-norm attacks and the ``min-*`` ensembles (issue 20), on the linear model of
linear_case.py whose exact minimal L0, L2 and L-inf distances are known."""
import pytest
import torch

from kdbench.attacks.cw import distance
from kdbench.attacks.registry import build_attack
from kdbench.errors import KdbenchError
from kdbench.evaluation import evaluate
from linear_case import make_case

case = pytest.fixture(scope="module")(make_case)
SIGMA_ZERO_EXCESS = 0.1  # measured: 1 of the 24 points one pixel above the exact count (mean 0.042)


def exact(case, norm):
    _, _, _, l2, linf, l0 = case
    return {"L2": l2, "Linf": linf, "L0": l0}[norm].double()


def evaluated(case, specs):
    model, x, y = case[:3]
    return evaluate(model, x, y, attacks=list(specs), eps=0.05, device="cpu", checks=False,
                    sensitivity=False).to_dict()


# (spec, norm, the largest mean ratio to the exact distance measured here, with a margin).
# foolbox's FMN-L2 anneals its step from max_stepsize to 1/100 of it: at the default 1.0 the last
# steps are ten times the distances of this 16-pixel model (mean ratio 4.3), at 0.1 within 1.23.
MEMBERS = [("ddn", "L2", 1.01), ("fab-l2", "L2", 1.01), ("fmn-l2:max_stepsize=0.1", "L2", 1.3),
           ("fmn-linf", "Linf", 1.01), ("fab-linf", "Linf", 1.01)]


@pytest.mark.parametrize("spec,norm,slack", MEMBERS)
def test_each_library_attack_reaches_the_exact_minimal_distance(case, spec, norm, slack):
    r = evaluated(case, [spec])
    d = torch.tensor(r["per_sample"]["min_distance"][spec], dtype=torch.float64)
    e = exact(case, norm)
    assert torch.isfinite(d).all() and r["min_perturbation"][spec]["norm"] == norm
    assert (d >= e * (1 - 1e-4)).all()  # never below the exact minimum: each x' was re-checked
    assert (d / e).mean() <= slack


def test_fmn_l0_counts_pixels_near_the_exact_l0(case):
    r = evaluated(case, ["fmn-l0"])
    d = torch.tensor(r["per_sample"]["min_distance"]["fmn-l0"], dtype=torch.float64)
    e = exact(case, "L0")
    assert (d >= e).all() and (d - e).mean() <= 1.0  # measured 0.71 pixel above the exact count


def test_sigma_zero_reaches_the_exact_l0(case):
    r = evaluated(case, ["sigma-zero"])
    d = torch.tensor(r["per_sample"]["min_distance"]["sigma-zero"], dtype=torch.float64)
    e = exact(case, "L0")
    assert r["min_perturbation"]["sigma-zero"]["norm"] == "L0"
    assert torch.isfinite(d).all() and (d >= e).all()  # never below the exact count: each x' re-checked
    assert (d - e).mean() <= SIGMA_ZERO_EXCESS


def test_without_adv_lib_sigma_zero_says_what_to_install(case, monkeypatch):
    from kdbench.adapters import advlib

    monkeypatch.setattr(advlib, "_LOADED", {})
    monkeypatch.setattr(advlib.importlib.util, "find_spec", lambda name: None)
    model, x, y = case[:3]
    with pytest.raises(KdbenchError, match=r"adv-lib is not installed: pip install --no-deps adv-lib==0\.2\.8"):
        build_attack("min-l0", 0.05).extra["members"][0].run(model, x, y)


def test_an_ensemble_is_the_per_point_minimum_of_its_members(case):
    members = ["ddn", "fab-l2", "fmn-l2"]
    spec = "min-l2:members=" + "+".join(members)
    r = evaluated(case, [spec])
    md = r["per_sample"]["min_distance"]
    assert set(md) == {spec, *members}  # every member's distances are kept in the result
    d = {k: torch.tensor(v, dtype=torch.float64) for k, v in md.items()}
    best = torch.stack([d[m] for m in members]).min(0).values
    assert torch.equal(d[spec], best)
    for m in members:  # never above its best member, on every point
        assert (d[spec] <= d[m]).all()
    assert (d[spec] >= exact(case, "L2") * (1 - 1e-4)).all()
    a = r["attacks"][spec]
    assert a["passes"]["forward"] == sum(r["attacks"][m]["passes"]["forward"] for m in members)
    assert a["passes"]["backward"] == sum(r["attacks"][m]["passes"]["backward"] for m in members)
    assert sum(a["best_of"].values()) == len(best) and set(a["best_of"]) == set(members)
    assert a["best_of"]["fmn-l2"] < a["best_of"]["ddn"] + a["best_of"]["fab-l2"]
    robust = r["per_sample"]["robust"]
    assert robust[spec] == [all(t) for t in zip(*(robust[m] for m in members))]


def test_an_ensemble_run_directly_returns_each_points_smallest_verified_example(case):
    model, x, y = case[:3]
    model.eval()
    a = build_attack("min-linf:members=fmn-linf+fab-linf", 0.05)
    torch.manual_seed(0)
    xa = a.run(model, x, y)
    assert (model(xa).argmax(1) != y).all()
    d = distance(xa.double() - x.double(), "Linf")
    singles = []
    for m in a.extra["members"]:
        torch.manual_seed(0)
        singles.append(distance(m.run(model, x, y).double() - x.double(), "Linf"))
    torch.testing.assert_close(d, torch.stack(singles).min(0).values)


def test_ensemble_members_are_checked(case):
    with pytest.raises(KdbenchError, match="member 'fmn-linf' is not a minimal-perturbation attack in L2"):
        build_attack("min-l2:members=ddn+fmn-linf", 0.05)
    with pytest.raises(KdbenchError, match="member 'pgd' is not a minimal-perturbation attack in L2"):
        build_attack("min-l2:members=pgd", 0.05)
    with pytest.raises(KdbenchError, match="members must name at least one attack"):
        build_attack("min-l2:members=+", 0.05)


def test_ensemble_outcome_takes_verified_minima_and_keeps_failures(case):
    """The pipeline's ensemble from member outcomes: inf (failed) stays inf, a point one member
    could not process is broken if another member broke it and not evaluated otherwise."""
    from kdbench.evaluation.pipeline import AttackOutcome, Passes, ensemble_outcome

    a = build_attack("min-l2:members=ddn+fab-l2", 0.5)
    inf, nan = float("inf"), float("nan")
    evaluable = torch.tensor([True, True, True, True, False])
    d1 = torch.tensor([0.3, inf, inf, nan, 0.0], dtype=torch.float64)
    d2 = torch.tensor([0.4, 0.2, inf, inf, 0.0], dtype=torch.float64)
    # robust under each member at eps 0.5 (a not-evaluated or not-evaluable point is never robust)
    r1 = torch.tensor([False, True, True, False, False])
    r2 = torch.tensor([False, False, True, True, False])
    n1 = torch.tensor([False, False, False, True, False])
    outs = [AttackOutcome(m, r, d, 1.0, Passes(10, 5), {}, nv) for m, r, d, nv in
            zip(a.extra["members"], (r1, r2), (d1, d2), (n1, torch.zeros(5, dtype=torch.bool)))]
    e = ensemble_outcome(a, outs, evaluable)
    assert e.distances[0] == 0.3 and e.distances[1] == 0.2 and e.distances[2] == inf  # failed everywhere: inf
    assert torch.isnan(e.distances[3])  # not processed by ddn, not broken by fab-l2
    assert e.robust.tolist() == [False, False, True, False, False]
    assert e.not_evaluated.tolist() == [False, False, False, True, False]
    assert e.best_of == {"ddn": 1, "fab-l2": 1}
    assert (e.passes.forward, e.passes.backward, e.seconds) == (20, 10, 2.0)
