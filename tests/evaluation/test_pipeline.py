"""kdbench evaluate: closed-form robust accuracy, backend agreement, reference AutoAttack,
reproducibility, the results store and resume, sharding, bad input."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT, run_cli
from kdbench.errors import KdbenchError
from kdbench.evaluation import evaluate
from kdbench.cli.evaluate import DEFAULT_WEIGHTS
from kdbench.evaluation.store import ResultStore
from kdbench.specs import resolve_model


class Linear2(nn.Module):
    """Two-class linear model: logits (0, w.x + b).  Its exact L-inf robust accuracy at eps is
    the share of correctly classified points with |w.x + b| > eps * ||w||_1 (box not binding)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.fixture(scope="module")
def linear_case():
    torch.manual_seed(0)
    d, eps = 16, 0.05
    w = torch.randn(d)
    x = 0.3 + 0.4 * torch.rand(400, 1, 4, 4)  # the eps-box stays inside [0, 1]
    model = Linear2(w, 0.0)
    z = x.flatten(1) @ w
    margin_needed = eps * w.abs().sum()
    keep = (z.abs() - margin_needed).abs() > 1e-3  # no ties at the boundary
    x = x[keep][:300]
    z = z[keep][:300]
    y = (torch.rand(len(x)) < 0.9).long() * (z > 0).long() + (torch.rand(len(x)) >= 0.9).long() * (z <= 0).long()
    correct = (z > 0).long() == y
    exact = (correct & (z.abs() > margin_needed)).float().mean().item()
    return model, x, y, eps, exact, correct.float().mean().item()


@pytest.mark.parametrize("attacks", [["fgsm", "pgd", "cw-linf", "bim", "mifgsm"], ["apgd-ce", "pgd@art", "fgsm@art",
                                                                                 "apgd-ce@torchattacks"]])
def test_closed_form_linear_model(linear_case, attacks):
    model, x, y, eps, exact, clean = linear_case
    r = evaluate(model, x, y, attacks=attacks, eps=eps, device="cpu")
    assert r.clean_accuracy == pytest.approx(clean)
    assert 0.2 < exact < clean  # a non-trivial case
    for a in attacks:
        assert r.robust_accuracy(a) == pytest.approx(exact), a
    assert r.robust_accuracy() == pytest.approx(exact)


@pytest.fixture(scope="module")
def multiclass_linear():
    """4-class linear model W x: point i is provably robust at eps iff for every j != y
    (z_y - z_j) > eps * ||w_y - w_j||_1; returns the points' provable-robustness mask too."""
    torch.manual_seed(1)
    W = torch.randn(4, 16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False))
    model[1].weight.data = W
    x = 0.3 + 0.4 * torch.rand(300, 1, 4, 4)
    z = x.flatten(1) @ W.t()
    y = z.argmax(1)
    eps = 0.04
    need = eps * (W[y][:, None, :] - W[None]).abs().sum(-1)  # N x 4
    gap = z.gather(1, y[:, None]) - z
    slack = (gap - need).masked_fill(torch.nn.functional.one_hot(y, 4).bool(), float("inf")).min(1).values
    keep = slack.abs() > 1e-3
    x, y, slack = x[keep], y[keep], slack[keep]
    return model, x, y, eps, slack > 0


def test_closed_form_multiclass_linear(multiclass_linear):
    """No attack may break a provably robust point, and the targeted APGD (one target per class
    pair) reaches the exact value."""
    model, x, y, eps, provable = multiclass_linear
    exact = provable.float().mean().item()
    r = evaluate(model, x, y, attacks=["fgsm", "pgd", "apgd-ce", "apgd-t"], eps=eps, device="cpu")
    assert 0.2 < exact < 0.9
    for a in ("fgsm", "pgd", "apgd-ce"):
        assert r.robust_accuracy(a) >= exact - 1e-9
    assert r.robust_accuracy("apgd-t") == pytest.approx(exact, abs=1 / len(y))


@pytest.fixture(scope="module")
def default_model():
    return resolve_model("smallcnn", 10, 1, 8, weights=str(DEFAULT_WEIGHTS)).model


def test_torchattacks_and_art_pgd_agree(default_model, digits):
    r = evaluate(default_model, dataset=digits, n=300, attacks=["pgd:random_start=false", "pgd@art:random_start=false",
                                                                "fgsm", "fgsm@art"], device="cpu")
    ps = r["per_sample"]["robust"]
    assert sum(a != b for a, b in zip(ps["pgd:random_start=false"], ps["pgd@art:random_start=false"])) <= 1
    assert sum(a != b for a, b in zip(ps["fgsm"], ps["fgsm@art"])) <= 1
    assert r["attacks"]["pgd@art:random_start=false"]["backend"] == "art"
    assert r["attacks"]["pgd:random_start=false"]["params"]["steps"] == 20


def test_autoattack_equals_pyautoattack_direct(default_model, digits):
    from pyautoattack import AutoAttack

    idx, _ = digits.eval_indices(32, seed=0)
    x, y = digits.test.images(idx), digits.test.y[idx]
    # eps 0.2: most points break early, so the full standard cascade stays fast on CPU
    r = evaluate(default_model, x, y, attacks=["autoattack"], eps=0.2, batch_size=32, seed=5, device="cpu")
    aa = AutoAttack(default_model, device="cpu", eps=0.2, norm="Linf", seed=5, version="standard")
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=32)
    with torch.no_grad():
        direct = (default_model(x_adv).argmax(1) == y).tolist()
    assert r["per_sample"]["robust"]["autoattack"] == direct
    assert 0 < sum(direct) < sum(r["per_sample"]["correct_clean"])  # some points survive, some break
    assert r["attacks"]["autoattack"]["backend"] == "autoattack"


def test_composed_autoattack_reuses_its_components_and_stays_exact(multiclass_linear, tmp_path):
    """AutoAttack standard is composed per point from APGD-CE, APGD-T, FAB-T and Square: components
    already run (earlier in the run, or in the store) are reused, FAB-T attacks only the points the
    APGDs left robust, and the result is the closed form, as the reference single call's is."""
    model, x, y, eps, provable = multiclass_linear
    x, y, provable = x[:120], y[:120], provable[:120]  # Square's 5 000 queries on the robust points dominate
    exact = provable.float().mean().item()
    comps = ["apgd-ce", "apgd-t", "square"]
    kw = dict(eps=eps, device="cpu", chunk_size=60, checks=False, sensitivity=False)
    first = evaluate(model, x, y, attacks=comps, store=ResultStore(tmp_path / "r.db"), **kw).to_dict()
    shutil.copyfile(tmp_path / "r.db", tmp_path / "r2.db")
    # AutoAttack alone: its components come from the store's per-chunk rows
    from_store = evaluate(model, x, y, attacks=["autoattack"], store=ResultStore(tmp_path / "r.db"), resume=True,
                          **kw).to_dict()
    # the standard suite's order: the components earlier in the same run (here themselves from the store)
    in_run = evaluate(model, x, y, attacks=comps + ["autoattack"], store=ResultStore(tmp_path / "r2.db"),
                      resume=True, **kw).to_dict()
    ps = in_run["per_sample"]["robust"]
    apgd_left = sum(a and b for a, b in zip(ps["apgd-ce"], ps["apgd-t"]))
    chunks = 2
    for r in (from_store, in_run):
        comp = r["attacks"]["autoattack"]["composition"]
        assert comp["fab"] == {"reused_chunks": 0, "attacked_points": apgd_left}
        assert all(comp[c] == {"reused_chunks": chunks, "attacked_points": 0} for c in comps)
        assert r["attacks"]["autoattack"]["params"]["composed"] is True
        assert r["attacks"]["autoattack"]["robust_accuracy"] == pytest.approx(exact, abs=1 / len(y))
    assert from_store["per_sample"]["robust"]["autoattack"] == ps["autoattack"]  # same components, same FAB run
    assert first["per_sample"]["robust"]["apgd-t"] == ps["apgd-t"]
    aa = torch.tensor(ps["autoattack"])
    assert not (aa & ~torch.tensor(ps["apgd-ce"])).any() and not (aa & ~torch.tensor(ps["square"])).any()
    assert aa[provable].all()  # never breaks a provably robust point
    # the reference single call (one chunk of it): also the closed form
    ref = evaluate(model, x[:60], y[:60], attacks=["autoattack:composed=false"], **kw).to_dict()
    a = ref["attacks"]["autoattack:composed=false"]
    assert a["params"]["composed"] is False and "composition" not in a
    assert a["robust_accuracy"] == pytest.approx(provable[:60].float().mean().item(), abs=1 / 60)


def test_channels_last_with_library_attacks_that_flatten_gradients():
    """On 3 channels a channels-last layout is real (one channel is both layouts at once):
    pyautoattack's APGD-T (in ``fast``, ``apgd-t`` and AutoAttack) flattens the input gradient with
    ``.view``, so the inputs it sees (channels-last ones given included) and the gradient must be in
    the standard layout; verdicts equal the standard layout's."""
    from kdbench.specs import resolve_model

    torch.manual_seed(0)
    model = resolve_model("smallcnn", 10, 3, 16).model
    x = torch.rand(24, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = "fast:audit=4,n_queries=50,t_iter=20"
    kw = dict(attacks=[spec], eps=0.07, device="cpu", checks=False, sensitivity=False, progress=False)
    a = evaluate(model, x, y, **kw).to_dict()
    b = evaluate(model, x, y, channels_last=True, **kw).to_dict()
    c = evaluate(model, x.contiguous(memory_format=torch.channels_last), y, channels_last=True, **kw).to_dict()
    assert 0 < a["attacks"][spec]["robust_accuracy"] < 1  # some points broken, some not
    assert a["attacks"][spec]["stages"]["apgd-t"]["attacked"] > 0
    assert a["per_sample"]["robust"] == b["per_sample"]["robust"] == c["per_sample"]["robust"]
    assert b["config"]["channels_last"]


def test_channels_last_changes_nothing_but_layout(default_model, digits):
    kw = dict(dataset=digits, n=80, attacks=["fgsm", "pgd:random_start=false"], device="cpu", checks=False)
    a = evaluate(default_model, **kw).to_dict()
    b = evaluate(default_model, channels_last=True, **kw).to_dict()
    assert a["per_sample"]["robust"] == b["per_sample"]["robust"] and b["config"]["channels_last"]
    assert b["config"]["amp"] is False
    c = evaluate(default_model, sensitivity=False, **kw).to_dict()  # the probe only adds metrics
    assert c["per_sample"]["robust"] == a["per_sample"]["robust"] and "sensitivity" not in c
    assert "sensitivity" in a and len(a["per_sample"]["sensitivity"]) == 80


def test_same_seed_reproduces_exactly(default_model, digits):
    kw = dict(dataset=digits, n=100, attacks=["pgd", "apgd-ce", "square:n_queries=200"], device="cpu", seed=3)
    a, b = evaluate(default_model, **kw).to_dict(), evaluate(default_model, **kw).to_dict()
    assert a["per_sample"] == b["per_sample"]
    assert a["provenance"]["dataset"]["subset_hash"] == b["provenance"]["dataset"]["subset_hash"]
    for k in a["attacks"]:
        assert a["attacks"][k]["robust_accuracy"] == b["attacks"][k]["robust_accuracy"]


def test_result_schema_and_cascade(default_model, digits):
    full = evaluate(default_model, dataset=digits, n=150, suite="quick", device="cpu").to_dict()
    for key in ("clean_accuracy", "n", "attacks", "worst_case", "per_sample", "validity", "provenance"):
        assert key in full
    a = full["attacks"]["pgd"]
    for key in ("robust_accuracy", "ci95", "w_robust", "backend", "params", "seconds", "passes", "per_class",
                "worst_class"):
        assert key in a
    assert a["passes"]["forward"] >= 20 * sum(full["per_sample"]["correct_clean"])
    assert a["w_robust"] == pytest.approx((full["clean_accuracy"] + a["robust_accuracy"]) / 2)
    worst = [all(v[i] for v in full["per_sample"]["robust"].values()) for i in range(full["n"])]
    assert full["worst_case"]["robust_accuracy"] == pytest.approx(sum(worst) / full["n"])
    prov = full["provenance"]
    assert prov["libraries"]["pyautoattack"] == "0.2.0" and prov["dataset"]["name"] == "digits"
    cas = evaluate(default_model, dataset=digits, n=150, suite="quick", device="cpu", cascade=True).to_dict()
    assert cas["worst_case"]["robust_accuracy"] == pytest.approx(full["worst_case"]["robust_accuracy"], abs=1 / 150)
    assert cas["attacks"]["apgd-t"]["passes"]["forward"] < full["attacks"]["apgd-t"]["passes"]["forward"]


def test_store_and_resume_after_failure(default_model, digits, tmp_path, monkeypatch):
    db = tmp_path / "r.db"
    kw = dict(dataset=digits, n=200, attacks=["fgsm", "pgd"], device="cpu", chunk_size=50)
    ref = evaluate(default_model, store=ResultStore(tmp_path / "ref.db"), **kw).to_dict()
    import kdbench.evaluation.pipeline as core

    real = core._attack_chunk
    calls = {"n": 0}

    def flaky(a, *args, **kwargs):
        calls["n"] += 1
        if a.key == "pgd" and calls["n"] == 7:  # fgsm: 4 chunks, then pgd chunk 0, 1, boom at 2
            raise KeyboardInterrupt
        return real(a, *args, **kwargs)

    monkeypatch.setattr(core, "_attack_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate(default_model, store=ResultStore(db), **kw)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM partial").fetchone()[0] == 6
    monkeypatch.setattr(core, "_attack_chunk", lambda *a, **k: (calls.__setitem__("resumed", calls.get("resumed", 0) + 1), real(*a, **k))[1])
    res = evaluate(default_model, store=ResultStore(db), resume=True, **kw).to_dict()
    assert calls["resumed"] == 2  # only pgd chunks 2 and 3 ran again
    assert res["per_sample"] == ref["per_sample"]
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
    assert con.execute("SELECT COUNT(*) FROM partial").fetchone()[0] == 8  # kept: a per-chunk cache
    # a larger suite on the same points runs only the new attack and agrees with a fresh run
    calls["resumed"] = 0
    wider = dict(kw, attacks=["fgsm", "pgd", "pgd:steps=5"])
    res2 = evaluate(default_model, store=ResultStore(db), resume=True, **wider).to_dict()
    assert calls["resumed"] == 4  # pgd:steps=5 only (its parameters differ from pgd's)
    fresh = evaluate(default_model, store=ResultStore(tmp_path / "fresh.db"), **wider).to_dict()
    assert res2["per_sample"] == fresh["per_sample"]
    same = lambda r: {k: v for k, v in r["attacks"]["pgd"].items() if k != "seconds"}  # noqa: E731
    assert same(res2) == same(res)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2


def test_bad_inputs(default_model):
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    cases = [(dict(x=x * 2, y=y), "must lie in"), (dict(x=x.masked_fill(x > 0.5, float("nan")), y=y), "NaN"),
             (dict(x=x[:, 0], y=y), "4-d"), (dict(x=x, y=y + 20), "labels range"), (dict(x=x, y=y, eps=0), "eps"),
             (dict(x=x, y=y, batch_size=0), "batch size"), (dict(x=x, y=y, attacks=["nope"]), "unknown attack"),
             (dict(x=x, y=y, attacks=["pgd:stepz=3"]), "unknown attack parameter"),
             (dict(x=x, y=y, attacks=["pgd@foolbox"]), "no backend")]
    for kw, msg in cases:
        kw.setdefault("eps", 0.1)
        with pytest.raises(KdbenchError, match=msg):
            evaluate(default_model, device="cpu", **kw)


@pytest.mark.subprocess
def test_cli_default_and_bad_input(tmp_path):
    db, out = tmp_path / "k.db", tmp_path / "r.json"
    res = run_cli("evaluate", "--n", "60", "--attacks", "fgsm,pgd:steps=5", "--db", db, "--out", out,
                  "--no-progress")
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["n"] == 60 and set(r["attacks"]) == {"fgsm", "pgd:steps=5"}
    assert r["provenance"]["model"]["weights_sha256"] and "worst case" in res.stdout
    bad = [(["--attacks", "nosuch"], "unknown attack"), (["--eps", "-1"], "eps must be positive"),
           (["--batch-size", "0"], "batch-size must be positive"),
           (["--model", "smallcnn", "--weights", tmp_path / "missing.pt", "--dataset", "digits"], "no such file or directory"),
           (["--model", "nosuchfile.py:f", "--dataset", "digits"], "model: no such file or directory: nosuchfile.py")]
    evil = tmp_path / "evil.pt"
    import pickle
    evil.write_bytes(pickle.dumps({"w": os.system}))
    bad.append((["--model", "smallcnn", "--weights", evil, "--dataset", "digits"], "refusing to load"))
    for args, msg in bad:
        r = run_cli("evaluate", *args, "--db", db, "--no-progress")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1  # only the good run


@pytest.mark.subprocess
def test_torchrun_shards_equal_single_process(tmp_path):
    args = ["evaluate", "--num-points", "120", "--attacks", "fgsm,pgd:steps=5,apgd-ce", "--chunk-size", "40", "--db", "",
            "--no-progress"]
    single = run_cli(*args, "--out", tmp_path / "one.json")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29544", "-m", "kdbench", *args, "--out", str(tmp_path / "two.json")], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["per_sample"] == b["per_sample"] and b["provenance"]["world_size"] == 2


def test_user_attacks_register_and_are_rechecked(default_model, digits):
    from kdbench.attacks.registry import register_attack

    @register_attack("test-noise", norms=("Linf",), defaults={"tries": 3})
    def noise(eps, norm, seed, num_classes, tries):
        def run(model, x, y):
            best = x.clone()
            for _ in range(tries):
                xa = (x + eps * torch.randn_like(x).sign()).clamp(0, 1)
                with torch.no_grad():
                    hit = model(xa).argmax(1) != y
                best[hit] = xa[hit]
            return best
        return run

    @register_attack("test-cheat")
    def cheat(eps, norm, seed, num_classes):
        return lambda model, x, y: (x + 3 * eps * torch.randn_like(x).sign()).clamp(0, 1)  # over budget

    kw = dict(dataset=digits, n=60, device="cpu", checks=False, sensitivity=False)
    r = evaluate(default_model, attacks=["pgd", "test-noise:tries=2", "test-cheat"], **kw).to_dict()
    a = r["attacks"]
    assert a["test-noise:tries=2"]["backend"] == "user" and a["test-noise:tries=2"]["params"]["tries"] == 2
    assert a["test-noise:tries=2"]["robust_accuracy"] >= a["pgd"]["robust_accuracy"]  # random noise is weaker
    assert a["test-cheat"]["robust_accuracy"] == r["clean_accuracy"]  # out-of-budget examples get no credit
    with pytest.raises(KdbenchError, match="unknown attack parameter"):
        evaluate(default_model, attacks=["test-noise:steps=2"], **kw)
    with pytest.raises(KdbenchError, match="supports Linf"):
        evaluate(default_model, attacks=["test-noise"], norm="L2", **kw)
