"""The ``fast`` attack (issue 27): exact on a linear model, a consistent stage cascade, the full
Square path for a masking model, a seeded and recorded audit, MALT's target ranking."""
import pytest
import torch
import torch.nn as nn

from kdbench.attacks.fast import malt_targets, merge_reports
from kdbench.evaluation import evaluate
from conftest import Scaled
from linear_case import make_case

KW = dict(device="cpu", checks=False, sensitivity=False, progress=False)


@pytest.fixture(scope="module")
def embedded():
    from kdbench.cli.evaluate import DEFAULT_WEIGHTS
    from kdbench.specs import resolve_model

    return resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model


def test_fast_is_exact_on_a_linear_model():
    """On logits (0, w.x) a point is robust iff its exact L-inf distance |w.x| / ||w||_1 exceeds
    eps: the fast verdict equals that, as AutoAttack's does (two classes: no targeted stage)."""
    model, x, y, _, linf, _ = make_case()
    for eps in (float(linf.quantile(0.3)) * 0.99, float(linf.median()) * 1.01):
        r = evaluate(model, x, y, attacks=["fast:audit=8,n_queries=200"], eps=eps, **KW)
        assert r.per_sample.robust["fast:audit=8,n_queries=200"] == (linf > eps).tolist()


def _chain(st):
    order = [k for k in ("pgd", "apgd-ce", "apgd-t") if k in st]
    return order


def test_each_stage_attacks_exactly_the_survivors_of_the_earlier_ones(embedded, digits):
    """Early stop per point: a point broken (and verified) in a stage is attacked by no later
    stage; the final robust count is the clean-correct points less every stage's breaks."""
    r = evaluate(embedded, dataset=digits, n=120, attacks=["fast:audit=16,n_queries=500"], **KW)
    st = r.attacks["fast:audit=16,n_queries=500"].stages
    correct = sum(r.per_sample.correct_clean)
    assert st["pgd"]["attacked"] == correct
    assert st["apgd-ce"]["attacked"] == correct - st["pgd"]["broken"]
    # each of the 2 targets attacks the points no earlier stage or target broke
    alive = correct - st["pgd"]["broken"] - st["apgd-ce"]["broken"]
    assert alive <= st["apgd-t"]["attacked"] <= 2 * alive
    broken = sum(st[k]["broken"] for k in ("pgd", "apgd-ce", "apgd-t", "square-audit", "square-full") if k in st)
    assert round(r.attacks["fast:audit=16,n_queries=500"].robust_accuracy * r.n) == correct - broken
    au = st["audit"]
    assert au["size"] == min(16, au["of"]) and au["path"] in ("audit", "full")
    assert au["catch_5pct"] == pytest.approx(1 - 0.95 ** au["size"])
    if au["path"] == "audit":
        assert au["rate_bound_95"] == pytest.approx(1 - 0.05 ** (1 / au["size"])) and au["broken"] == 0
    # every stage's passes are counted in the row's total
    total = sum(v["forward"] + v["backward"] for k, v in st.items() if k != "audit")
    p = r.attacks["fast:audit=16,n_queries=500"].passes
    assert total <= p.forward + p.backward <= total * 1.01 + 200


def test_the_audit_is_seeded_and_recorded(embedded, digits):
    spec = "fast:audit=12,n_queries=300"
    a = evaluate(embedded, dataset=digits, n=80, attacks=[spec], seed=3, **KW).attacks[spec].stages["audit"]
    b = evaluate(embedded, dataset=digits, n=80, attacks=[spec], seed=3, **KW).attacks[spec].stages["audit"]
    c = evaluate(embedded, dataset=digits, n=80, attacks=[spec], seed=4, **KW).attacks[spec].stages["audit"]
    assert a["points"] == b["points"] and a["seed"] == 3 and len(a["points"][0]) == 12
    assert a["points"] != c["points"]


def test_a_masking_model_takes_the_full_square_path(embedded, digits):
    """Logits x 10^4 (a saturated float32 softmax, as after T = 100 defensive distillation):
    exactly zero CE gradients on most points, so Square runs on every survivor, not a sample."""
    spec = "fast:audit=8,n_queries=300"
    r = evaluate(Scaled(embedded, 1e4), dataset=digits, n=60, attacks=[spec], **KW)
    st = r.attacks[spec].stages
    assert st["audit"]["path"] == "full"
    assert {"zero_gradients", "saturated_softmax"} <= set(st["audit"]["reasons"])
    survivors = st["audit"]["of"]
    assert st["square-audit"]["attacked"] + st.get("square-full", {"attacked": 0})["attacked"] == survivors
    plain = evaluate(embedded, dataset=digits, n=60, attacks=[spec], **KW).attacks[spec].stages["audit"]
    assert not {"zero_gradients", "saturated_softmax"} & set(plain["reasons"])


def test_malt_ranks_targets_by_linearised_distance():
    """A linear 3-class model: the linearised distance to class j is exactly
    (z_y - z_j) / ||w_y - w_j||_1 (L-inf), so MALT's ranking is the true nearest boundary first."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False)
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(20, 1, 2, 3)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight.detach()
    dist = torch.stack([(z.gather(1, y[:, None]).squeeze(1) - z[:, j]) / (w[y] - w[j]).abs().sum(1)
                        for j in range(3)], 1)
    dist[torch.arange(20), y] = float("inf")
    assert torch.equal(malt_targets(model, x, y, 2, "Linf"), dist.argsort(1)[:, :2])


def test_merged_reports_sum_chunks_and_bound_the_audit():
    a = {"pgd": {"attacked": 10, "broken": 2, "forward": 30, "backward": 28},
         "audit": {"path": "audit", "reasons": [], "size": 8, "of": 8, "broken": 0, "seed": 0, "broken_at": [],
                   "points": list(range(8))}}
    b = {"pgd": {"attacked": 5, "broken": 1, "forward": 9, "backward": 8},
         "audit": {"path": "full", "reasons": ["randomized"], "size": 4, "of": 4, "broken": 0, "seed": 0,
                   "broken_at": [], "points": list(range(4))}}
    m = merge_reports([a, b])
    assert m["pgd"] == {"attacked": 15, "broken": 3, "forward": 39, "backward": 36}
    assert m["audit"]["path"] == "full" and m["audit"]["size"] == 12 and m["audit"]["reasons"] == ["randomized"]
    assert m["audit"]["rate_bound_95"] == pytest.approx(1 - 0.05 ** (1 / 12))


def test_stop_solved_keeps_apgds_verdicts_for_fewer_passes(embedded, digits):
    """Early stop inside the library's APGD: the rows a pass verified as fooled are not run again,
    the other rows follow APGD's own trajectory, so the same points are broken (each with a
    verified x') as by the plain call on the same seed, for fewer passes."""
    from pyautoattack.autopgd_base import APGDAttack

    from kdbench.attacks.fast import StopSolved, _fooled
    from kdbench.models import CountingModel

    x, y, eps = digits.test.images(range(150)), digits.test.y[:150], 0.15
    with torch.no_grad():
        keep = embedded(x).argmax(1) == y
    x, y = x[keep], y[keep]

    def run(wrap):
        cm = CountingModel(embedded)
        m = StopSolved(cm, x, y, eps, "Linf") if wrap else cm
        a = APGDAttack(m, norm="Linf", eps=eps, n_iter=20, n_restarts=1, loss="ce", seed=0, device="cpu")
        xa = a.perturb(x, y)
        xa = m.apply(xa) if wrap else xa
        return _fooled(embedded, x, xa, y, eps, "Linf"), cm.forward_images + cm.backward_images

    plain, plain_passes = run(False)
    stopped, stopped_passes = run(True)
    assert 10 < int(plain.sum()) < len(x)  # some broken, some robust: the comparison means something
    assert torch.equal(stopped, plain)
    assert stopped_passes < 0.8 * plain_passes


def test_malt_ranks_the_same_where_the_backward_refuses_a_retained_graph(monkeypatch):
    """A ``torch.compile``d model's backward refuses ``retain_graph`` (donated buffers): MALT then
    runs one forward per class and ranks exactly as through the retained graph."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    x = torch.rand(30, 1, 3, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    expected = malt_targets(model, x, y, 3, "Linf")
    real, calls = torch.autograd.grad, []

    def refusing(*args, retain_graph=None, **kw):
        calls.append(retain_graph)
        if retain_graph:
            raise RuntimeError("This backward function was compiled with non-empty donated buffers which "
                               "requires create_graph=False and retain_graph=False")
        return real(*args, retain_graph=retain_graph, **kw)

    monkeypatch.setattr(torch.autograd, "grad", refusing)
    assert torch.equal(malt_targets(model, x, y, 3, "Linf"), expected)
    assert calls[0] is True and calls[1:] == [False] * 5  # the retained try, then one pass per class
