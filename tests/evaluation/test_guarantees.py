"""docs/guarantees.md, in-process: every number is right or refused (planted faults)."""
import json
import math
import sqlite3

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.attacks.registry import build_attack, register_attack
from kdbench.errors import KdbenchError
from kdbench.evaluation.pipeline import evaluate
from kdbench.evaluation.result import EvalResult
from kdbench.evaluation.store import ResultStore
from kdbench.evaluation.validity import invariants


class Linear(nn.Module):
    """A linear classifier on 1x4x4 images: logits W x + b (analytic margins)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 16, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


def points(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = Linear()(x).argmax(1)
    y[::5] = (y[::5] + 1) % 3  # some clean-misclassified points
    return x, y


KW = dict(attacks=["fgsm", "pgd:steps=5"], eps=0.05, device="cpu", checks=False, sensitivity=False, chunk_size=10)


# --- 1. results are keyed by what was evaluated -------------------------------------------

def test_store_key_is_the_model_content_and_resume_refuses_a_changed_model(tmp_path):
    x, y = points()
    m = Linear()
    store = ResultStore(tmp_path / "r.db")
    r1 = evaluate(m, x, y, store=store, **KW)
    assert r1.provenance.model.content_sha256 and len(r1.provenance.model.content_sha256) == 64
    with torch.no_grad():
        m.fc.weight[0, 0] += 1.0  # the same object, a different model
    with pytest.raises(KdbenchError, match="--resume: the model's parameters changed"):
        evaluate(m, x, y, store=store, resume=True, **KW)
    r2 = evaluate(m, x, y, store=store, **KW)  # without --resume: a fresh evaluation, its own key
    assert r2.provenance.key != r1.provenance.key
    assert r2.provenance.model.content_sha256 != r1.provenance.model.content_sha256


def test_resume_refuses_changed_points(tmp_path):
    x, y = points()
    store = ResultStore(tmp_path / "r.db")
    evaluate(Linear(), x, y, store=store, **KW)
    x2 = x.clone()
    x2[3] = 1 - x2[3]
    with pytest.raises(KdbenchError, match="--resume: the evaluated points changed"):
        evaluate(Linear(), x2, y, store=store, resume=True, **KW)


def test_a_tampered_stored_chunk_is_refused_and_nothing_is_stored(tmp_path):
    x, y = points()
    db = tmp_path / "r.db"
    ref = evaluate(Linear(), x, y, store=ResultStore(db), **KW)
    wrong = ref.per_sample.correct_clean.index(False)  # a clean-misclassified point
    con = sqlite3.connect(db)
    key, attack, chunk, robust = con.execute("SELECT key, attack, chunk, robust FROM partial WHERE chunk=?",
                                             (wrong // 10,)).fetchone()
    flags = json.loads(robust)
    flags[wrong % 10] = True  # a stored "robust" point the model misclassifies clean
    with con:
        con.execute("UPDATE partial SET robust=? WHERE key=? AND attack=? AND chunk=?",
                    (json.dumps(flags), key, attack, chunk))
    before = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    with pytest.raises(KdbenchError, match="corrupted store"):
        evaluate(Linear(), x, y, store=ResultStore(db), resume=True, **KW)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == before


@pytest.mark.parametrize("fault, match", [
    (lambda d: d["per_sample"]["robust"]["fgsm"].__setitem__(d["per_sample"]["correct_clean"].index(False), True),
     "robust that the model misclassifies"),
    (lambda d: d["attacks"]["fgsm"].__setitem__("robust_accuracy", d["attacks"]["fgsm"]["robust_accuracy"] + 0.1),
     "is not"),
    (lambda d: d["per_sample"]["robust"]["fgsm"].pop(), "outcomes for"),
    (lambda d: d["worst_case"].__setitem__("robust_accuracy", 1.0), "worst case"),
    (lambda d: d.__setitem__("clean_accuracy", 0.0), "clean accuracy"),
])
def test_invariants_refuse_a_wrong_result_before_it_is_stored(tmp_path, fault, match):
    x, y = points()
    good = evaluate(Linear(), x, y, **KW)
    invariants(good)  # holds of a real result
    d = good.to_dict()
    fault(d)
    bad = EvalResult.from_dict(d)
    with pytest.raises(KdbenchError, match=match):
        invariants(bad)
    store = ResultStore(tmp_path / "r.db")
    with pytest.raises(KdbenchError):
        store.finish("k", bad)
    assert store.results() == []


# --- 2. an attack that did not attack is not robustness ----------------------------------

@pytest.mark.parametrize("spec, match", [
    ("pgd:steps=0", "steps must be an integer >= 1"), ("pgd:steps=2.5", "steps must be an integer"),
    ("pgd:step_size=-0.01", "step_size must be a finite positive"), ("pgd:step_size=nan", "finite positive"),
    ("apgd-ce:n_restarts=0", "n_restarts"), ("square:n_queries=0", "n_queries"), ("square:p_init=2", "p_init"),
    ("cw-l2:lr=0", "lr must be"), ("mifgsm:decay=-1", "decay must be a finite non-negative"),
])
def test_no_op_attack_parameters_are_refused(spec, match):
    with pytest.raises(KdbenchError, match=match):
        build_attack(spec, 0.1, "Linf")


def test_budgets_beyond_the_input_space_need_force():
    x, y = points(10)
    with pytest.raises(KdbenchError, match="exceeds the Linf diameter"):
        evaluate(Linear(), x, y, **{**KW, "eps": 1.5})
    with pytest.raises(KdbenchError, match="exceeds the L2 diameter"):
        evaluate(Linear(), x, y, **{**KW, "eps": 4.5, "norm": "L2", "attacks": ["pgd"]})  # sqrt(16) = 4
    r = evaluate(Linear(), x, y, **{**KW, "eps": 1.5, "attacks": ["fgsm"]}, force=True)
    assert r.attacks["fgsm"].robust_accuracy == 0.0  # eps 1.5 reaches every image
    for eps in (float("nan"), float("inf"), 0.0, -0.1):
        with pytest.raises(KdbenchError, match="eps must be a finite positive"):
            evaluate(Linear(), x, y, **{**KW, "eps": eps})


class NaNGrad(torch.autograd.Function):
    """Identity forward; a NaN input gradient on points whose first pixel exceeds 0.5."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        bad = (x.flatten(1)[:, 0] > 0.5).view(-1, 1, 1, 1)
        return torch.where(bad, torch.full_like(g, float("nan")), g)


class NaNGradModel(Linear):
    def forward(self, x):
        return super().forward(NaNGrad.apply(x))


def test_nan_gradients_make_points_not_evaluated_never_robust():
    x, y = points()
    bad = x.flatten(1)[:, 0] > 0.5
    ref = evaluate(Linear(), x, y, **KW)
    r = evaluate(NaNGradModel(), x, y, **KW)  # --no-checks and --no-sensitivity: still caught
    assert r.clean_accuracy == ref.clean_accuracy  # clean logits are the linear model's
    flag = next(f for f in r.validity.flags if f.name == "nan_gradients")
    assert flag.evidence["points"] == int(bad.sum()) > 0
    for k in KW["attacks"]:
        rob = r.per_sample.robust[k]
        assert not any(rob[i] for i in bad.nonzero().flatten().tolist())
        nev = sorted(r.per_sample.not_evaluated[k])
        correct = r.per_sample.correct_clean
        assert nev == [i for i in range(len(y)) if bad[i] and correct[i]]
        assert r.attacks[k].not_evaluated == len(nev)
        # the other points are attacked exactly as for the plain model
        assert [rob[i] for i in range(len(y)) if not bad[i]] == \
            [ref.per_sample.robust[k][i] for i in range(len(y)) if not bad[i]]
    assert "not_evaluated" in r.validity.names


def test_an_attack_returning_nan_counts_those_points_not_evaluated():
    @register_attack("test-nan-half")
    def nan_half(eps, norm, seed, num_classes):
        def run(model, x, y):
            out = x.clone()
            out[::2] = float("nan")
            return out
        return run

    x, y = points()
    r = evaluate(Linear(), x, y, **{**KW, "attacks": ["test-nan-half"]})
    rob, correct = r.per_sample.robust["test-nan-half"], r.per_sample.correct_clean
    # a clean image back is "robust" only for the odd points; the NaN rows are never robust
    target = [i for i in range(len(y)) if correct[i]]
    evens = [i for k, i in enumerate(target) if k % 2 == 0]
    assert sorted(r.per_sample.not_evaluated["test-nan-half"]) == evens
    assert r.attacks["test-nan-half"].robust_accuracy == pytest.approx((len(target) - len(evens)) / len(y))
    assert "not_evaluated" in r.validity.names


def test_an_attack_returning_the_wrong_shape_is_one_line():
    @register_attack("test-bad-shape")
    def bad_shape(eps, norm, seed, num_classes):
        return lambda model, x, y: x[:1]

    x, y = points()
    with pytest.raises(KdbenchError, match="returned .* for inputs of shape"):
        evaluate(Linear(), x, y, **{**KW, "attacks": ["test-bad-shape"]})


def test_out_of_budget_outputs_get_no_credit_and_are_flagged():
    @register_attack("test-over-budget")
    def over(eps, norm, seed, num_classes):
        return lambda model, x, y: (x + 0.9 * torch.sign(torch.randn_like(x))).clamp(0, 1)

    x, y = points()
    r = evaluate(Linear(), x, y, **{**KW, "attacks": ["test-over-budget"]})
    assert r.attacks["test-over-budget"].robust_accuracy == r.clean_accuracy
    assert r.validity.flags[[f.name for f in r.validity.flags].index("outside_budget")].evidence["attacks"][
        "test-over-budget"] > 0


# --- 3. models: named errors, randomness, batch dependence, no side effects --------------

class Returns(Linear):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        z = super().forward(x)
        if self.how == "tuple":
            return z, x
        if self.how == "int":
            return z.round().long()
        if self.how == "nan":
            return z * float("nan")
        if self.how == "inf-some":
            return torch.where(x.flatten(1)[:, :3] > 0.9, float("inf"), z)
        if self.how == "raise":
            raise RuntimeError("boom in forward")
        if self.how == "raise-grad" and torch.is_grad_enabled() and x.requires_grad:
            raise ValueError("boom under autograd")
        return z


@pytest.mark.parametrize("how, match", [
    ("tuple", "Returns returned tuple, not a logits tensor"), ("int", "returned int64 logits"),
    ("nan", "Returns returned NaN or infinite logits"), ("inf-some", "NaN or infinite logits"),
    ("raise", "Returns raised RuntimeError during a probe"),
    ("raise-grad", "Returns raised ValueError during the clean pass"),
])
def test_model_faults_are_one_line_naming_the_model(how, match):
    x, y = points()
    with pytest.raises(KdbenchError, match=match) as e:
        evaluate(Returns(how), x, y, **KW)
    assert "\n" not in str(e.value)


def test_a_model_failing_in_an_attack_names_the_attack_stage():
    class LateFail(Linear):
        calls = 0

        def forward(self, x):
            LateFail.calls += 1
            if LateFail.calls > 12:
                raise RuntimeError("late")
            return super().forward(x)

    x, y = points()
    with pytest.raises(KdbenchError, match="LateFail raised RuntimeError during attack"):
        evaluate(LateFail(), x, y, **KW)


class Noisy(Linear):
    def forward(self, x):
        return super().forward(x) + 0.5 * torch.randn(len(x), 3)


class AlwaysDropout(Linear):
    def forward(self, x):
        return self.fc(F.dropout(x.flatten(1), 0.5, training=True))


class StuckTrainBN(nn.Module):
    """BatchNorm that ignores eval(): batch statistics at every pass."""

    def __init__(self):
        super().__init__()
        self.lin = Linear()
        self.bn = nn.BatchNorm1d(3)

    def train(self, mode=True):
        super().train(mode)
        self.bn.training = True
        return self

    def forward(self, x):
        return self.bn(self.lin(x))


@pytest.mark.parametrize("model, flag", [(Noisy, "randomized"), (AlwaysDropout, "randomized"),
                                         (StuckTrainBN, "batch_dependent"), (Linear, None)])
def test_randomised_and_batch_dependent_models_are_flagged(model, flag):
    x, y = points()
    r = evaluate(model(), x, y, **KW)
    names = r.validity.names & {"randomized", "batch_dependent"}
    assert names == ({flag} if flag else set())
    if flag == "randomized":
        assert "autoattack:version=rand" in next(f.message for f in r.validity.flags if f.name == flag)


class Counter(nn.Module):
    """A BN model with a buffer its forward pass changes, partly frozen, left in train mode."""

    def __init__(self):
        super().__init__()
        self.lin = Linear()
        self.bn = nn.BatchNorm1d(3)
        self.register_buffer("calls", torch.zeros(()))
        self.lin.fc.bias.requires_grad_(False)

    def forward(self, x):
        self.calls += 1
        return self.bn(self.lin(x))


def test_evaluate_restores_the_callers_model_exactly():
    m = Counter().train()
    m.lin.eval()  # a mixed mode the caller chose
    modes = [mod.training for mod in m.modules()]
    grads = [p.requires_grad for p in m.parameters()]
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = points()
    evaluate(m, x, y, **{**KW, "checks": True, "checks_n": 5, "sensitivity": True})
    assert [mod.training for mod in m.modules()] == modes
    assert [p.requires_grad for p in m.parameters()] == grads
    after = m.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # buffers too: calls, BN statistics
    assert all(p.is_contiguous() for p in m.parameters())
    # also when the evaluation fails
    with pytest.raises(KdbenchError):
        evaluate(m, x, y, **{**KW, "attacks": ["pgd:steps=0"]})
    assert [mod.training for mod in m.modules()] == modes


def test_evaluate_restores_the_model_after_channels_last_and_a_failure():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 3, 3)

        def forward(self, x):
            return self.c(x).mean((2, 3))

    m = Conv()
    x, y = points()
    y = y.clamp(max=2)
    before = m.c.weight.clone()
    evaluate(m, x, y, **KW, channels_last=True)
    assert m.c.weight.is_contiguous() and torch.equal(m.c.weight, before) and m.training


def test_store_rows_hold_the_not_evaluated_points_across_resume(tmp_path):
    x, y = points()
    db = tmp_path / "r.db"
    first = evaluate(NaNGradModel(), x, y, store=ResultStore(db), **KW)
    again = evaluate(NaNGradModel(), x, y, store=ResultStore(db), resume=True, **KW)
    assert again.per_sample.not_evaluated == first.per_sample.not_evaluated
    assert again.per_sample.robust == first.per_sample.robust
    assert math.isclose(again.worst_case.robust_accuracy, first.worst_case.robust_accuracy)
