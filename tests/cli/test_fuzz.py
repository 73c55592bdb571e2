"""Property-based fuzzing of the command line (docs/guarantees.md, promise 7): for any arguments
and any malformed file, kdbench exits 0 with a valid result, or exits 2 with one line, and the
results store is unchanged by a refused run."""
import contextlib
import io
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kdbench.cli import main
from kdbench.evaluation.result import EvalResult
from kdbench.evaluation.validity import invariants

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def assert_refused_in_one_line(rc, err):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("kdbench: error: "), (rc, err)


def rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, json FROM results ORDER BY id").fetchall()
    finally:
        con.close()


numbers = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "1e9", "0.1", "2", "abc", "", "1e-12"]),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 300).map(str))
def mostly(valid, anything=numbers):
    """Valid values two times in three, so that some runs get through to a result."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), anything)


attack_specs = st.lists(st.sampled_from([
    "fgsm", "pgd:steps=2", "pgd:steps=0", "pgd:steps=-3", "pgd:step_size=0", "pgd:step_size=nan", "bim:steps=1",
    "pgd:nosuch=1", "nosuch", "pgd@nolib", "fgsm@art", "mifgsm:decay=-1", "deepfool:steps=2", "cw-linf:steps=2",
    "pgd:steps=2.5", "pgd:random_start=maybe", "square:n_queries=0", "apgd-ce:steps=2"]), min_size=1, max_size=3)
valid_attacks = st.sampled_from([["fgsm"], ["pgd:steps=2", "fgsm"], ["bim:steps=1"], ["apgd-ce:steps=2"]])
attack_specs = st.one_of(valid_attacks, valid_attacks, attack_specs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    db = d / "r.db"
    rc, _, err = run(["evaluate", "--db", db, "--n", "4", "--attacks", "fgsm", "--no-checks", "--no-sensitivity",
                      "--no-progress"])
    assert rc == 0, err
    return d, db


VALID = {"n": "6", "eps": "0.1", "batch-size": "4", "chunk-size": "5", "norm": "Linf"}


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID)), numbers, max_size=2), attacks=attack_specs,
       norm=st.sampled_from(["Linf", "Linf", "Linf", "L2", "l3"]), extra=st.lists(st.sampled_from(
           ["--cascade", "--resume", "--force", "--channels-last", "--seed=7", "--suite=quick"]), max_size=1))
def test_evaluate_arguments(store, changes, attacks, norm, extra):
    """A valid command with up to two options replaced by arbitrary text, and arbitrary attack specs."""
    d, db = store
    before = rows(db)
    out = d / "out.json"
    out.unlink(missing_ok=True)
    opts = {**VALID, "norm": norm, **changes}
    rc, _, err = run(["evaluate", "--db", db, "--out", out, *[f"--{k}={v}" for k, v in opts.items()],
                      "--attacks", ",".join(attacks), "--no-checks", "--no-sensitivity", "--no-progress", *extra])
    after = rows(db)
    event(f"exit {rc}")
    if rc == 0:
        r = EvalResult.from_dict(json.loads(out.read_text()))
        invariants(r)
        assert after[:len(before)] == before and len(after) == len(before) + 1
    else:
        assert_refused_in_one_line(rc, err)
        assert after == before and not out.exists()


junk = st.one_of(st.binary(max_size=300), st.sampled_from([
    b"", b"{", b"[]", b"{}", b'{"clean_accuracy": 0.5, "attacks": {}}', b'{"clean_accuracy": "x", "attacks": []}',
    b"name,dataset,threat,eps,n\n", b"name,dataset,threat,eps,n,worst_case\nm,digits,Linf,0.1,8,0.5\n",
    b"SQLite format 3\x00" + bytes(200), b"\xff\xfe\x00garbage"]))


@SETTINGS
@given(content=junk, suffix=st.sampled_from([".json", ".csv", ".db"]))
def test_malformed_files(store, content, suffix):
    d, db = store
    before = rows(db)
    rc0, _, err0 = run(["evaluate", "--db", "", "--out", d / "good.json", "--n", "4", "--attacks", "fgsm",
                        "--no-checks", "--no-sensitivity", "--no-progress"]) if not (d / "good.json").exists() \
        else (0, "", "")
    assert rc0 == 0, err0
    bad = d / f"bad{suffix}"
    bad.write_bytes(content)
    commands = [["check", bad, "--baseline", d / "good.json"], ["check", d / "good.json", "--baseline", bad],
                ["leaderboard", "--db", bad], ["plot", bad, "--out", d / "plots"]]
    for args in commands:
        rc, _, err = run(args)
        if rc != 2:
            assert rc in (0, 1) and not err.strip().startswith("Traceback"), (args, rc, err)
        else:
            assert_refused_in_one_line(rc, err)
    assert rows(db) == before


@SETTINGS
@given(key=st.sampled_from(["epochs", "seed", "optimizer.lr", "augment", "teachers", "method_params", "eval.n",
                            "schedule.milestones", "attack.eps", "nosuch", "optimizer", "name", "model_kwargs.x"]),
       value=st.one_of(st.sampled_from(["ten", "1.5", "-1", "[1, 2]", "{a: 1}", "null", "true", "''", "[", "3"]),
                       st.text(max_size=12)))
def test_train_set_values(tmp_path_factory, key, value):
    out = tmp_path_factory.mktemp("t") / "run"
    out.mkdir()
    (out / "state.pt").write_bytes(b"")  # an existing run: a well-typed --set stops here, before training
    rc, _, err = run(["train", "--method", "pgd-at", "--dataset", "digits", "--out", out, "--set", f"{key}={value}",
                      "--no-progress"])
    assert_refused_in_one_line(rc, err)
