"""The typed EvalResult: its JSON is the documented schema key for key (every committed result
reads back and writes out unchanged), attributes read what the keys hold, and a sparse or older
result still reads."""
import json

import pytest
import torch
from conftest import ROOT

from kdbench.evaluation import EvalResult, evaluate

COMMITTED = sorted((ROOT / "leaderboards" / "fashion-mnist" / "results").glob("*.json")) + \
    sorted((ROOT / "leaderboards" / "seed000-mnist5k" / "runs").glob("*/*/*.json"))


def test_every_committed_result_round_trips_key_for_key():
    assert len(COMMITTED) >= 118
    for path in COMMITTED:
        text = json.loads(path.read_text())
        assert json.dumps(EvalResult.from_dict(text).to_dict()) == json.dumps(text), path


def test_attributes_read_what_the_json_holds():
    d = json.loads((ROOT / "leaderboards" / "fashion-mnist" / "results" / "ard.json").read_text())
    r = EvalResult.from_dict(d)
    assert r.worst_case.robust_accuracy == d["worst_case"]["robust_accuracy"] == r.robust_accuracy()
    assert r.attacks["pgd"].params == d["attacks"]["pgd"]["params"] and r.attacks["pgd"].passes.forward == \
        d["attacks"]["pgd"]["passes"]["forward"]
    assert r.provenance.model.run.seed == 0 and r.run.row_name == "ard"
    assert r.sensitivity.fraction_below_1e10 == d["sensitivity"]["fraction_below_1e-10"]
    assert r.validity.names == {f["name"] for f in d["validity"]["flags"]}
    assert r.worst_case_flags() == [all(v) for v in zip(*(d["per_sample"]["robust"][a]
                                                          for a in d["worst_case"]["attacks"]))]
    assert r["n"] == d["n"]  # the JSON view, for scripts written against dictionaries


@pytest.mark.parametrize("name,seed,row", [("ard-s1", 1, "ard"), ("ard-s1", 0, "ard-s1"), ("teacher", 0, "teacher"),
                                           ("-s0", 0, "-s0")])
def test_row_name_strips_only_the_runs_own_seed(name, seed, row):
    from kdbench.evaluation.result import RunInfo

    assert RunInfo(name, seed=seed).row_name == row


def test_a_fresh_result_round_trips(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = digits.test.images(torch.arange(12)), digits.test.y[:12]
    r = evaluate(model, x, y, attacks=["fgsm", "pgd:steps=2"], eps=0.1, sensitivity=True, checks=False,
                 provenance={"model": {"spec": "lin"}, "note": "mine"})
    d = r.to_dict()
    assert EvalResult.from_dict(json.loads(json.dumps(d))).to_dict() == d
    assert d["provenance"]["note"] == "mine" and r.provenance.extra == {"note": "mine"}
    assert r.provenance.model.spec == "lin" and d["provenance"]["model"]["spec"] == "lin"
    assert "index" not in d["per_sample"] and d["provenance"]["dataset"]["name"] == "tensors"


def test_a_sparse_result_reads():
    r = EvalResult.from_dict({"clean_accuracy": 0.5, "n": 2, "attacks": {"pgd": {"robust_accuracy": 0.5}},
                              "config": {"norm": "Linf", "eps": 0.1}, "worst_case": {"robust_accuracy": 0.5}})
    assert r.attacks["pgd"].robust_accuracy == 0.5 and r.per_sample.robust == {} and r.run is None
