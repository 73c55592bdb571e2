"""Issue 21, items 3-5: no silent meaningless run, portable run directories, discoverable plugins.
Rows are identified by model content; the eps filter matches the printed precision; a run
directory evaluates from anywhere with its teachers, also after being copied; missing paths are
"no such file or directory"; a failed train leaves no directory."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli.evaluate import DEFAULT_WEIGHTS
from test_faults import FAST, cli, one_line

ROOT = Path(__file__).resolve().parents[2]


def test_rows_are_models_by_content_and_the_embedded_row_names_its_method(capsys, tmp_path):
    """Two weights files of one architecture are two rows; kdbench's own weights name their method."""
    from kdbench.models import build_model
    from kdbench.weights import save_weights, sha256_file

    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_weights(build_model("smallcnn", 10, 1, 8), other)  # no metadata: no method
    db = tmp_path / "r.db"
    assert cli(capsys, "evaluate", "--db", db, *FAST)[0] == 0
    assert cli(capsys, "evaluate", "--model", "smallcnn", "--weights", other, "--dataset", "digits", "--db", db,
               *FAST)[0] == 0
    rc, out, err = cli(capsys, "leaderboard", "--db", db, "--out", tmp_path / "b")
    assert rc == 0, err
    import csv

    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "b.csv").open())}
    embedded = f"pgd-at-smallcnn@{sha256_file(DEFAULT_WEIGHTS)[:8]}"
    assert set(rows) == {embedded, f"smallcnn@{sha256_file(other)[:8]}"}
    assert rows[embedded]["method"] == "pgd-at"


def test_the_eps_filter_matches_the_printed_precision_and_lists_what_is_there(capsys, tmp_path):
    db = tmp_path / "r.db"
    assert cli(capsys, "evaluate", "--db", db, "--eps", "8/255", *FAST)[0] == 0
    for text in ("8/255", "0.03137", "0.031373"):
        rc, out, err = cli(capsys, "leaderboard", "--db", db, "--eps", text)
        assert rc == 0 and "pgd-at-smallcnn@" in out, (text, err)
    rc, _, err = cli(capsys, "leaderboard", "--db", db, "--eps", "0.0314")
    assert rc == 2 and one_line(err, "match the filters", "eps values present: 0.0313725"), err
    rc, _, err = cli(capsys, "leaderboard", "--db", db, "--eps", "-1")
    assert rc == 2 and one_line(err, "a budget is a positive number"), err


def _train(capsys, *args):
    rc, out, err = cli(capsys, "train", "--dataset", "digits", "--epochs", "1", "--train-subset", "128",
                       "--no-progress", *args)
    assert rc == 0, err


def test_a_copied_run_evaluates_from_anywhere_with_its_teacher(capsys, tmp_path, monkeypatch):
    """Teachers are recorded by run-relative path and sha256: the pair copied elsewhere and
    evaluated from a third directory finds its teacher; other weights at that path are refused."""
    work = tmp_path / "a"
    work.mkdir()
    monkeypatch.chdir(work)
    _train(capsys, "--method", "pgd-at", "--out", "runs/t")
    _train(capsys, "--method", "rslad", "--teacher", "runs/t", "--out", "runs/s")
    ref = yaml.safe_load((work / "runs/s/config.yaml").read_text())["resolved"]["teacher_refs"][0]
    from kdbench.weights import sha256_file

    assert ref == {"spec": "runs/t", "path": "../t", "sha256": sha256_file(work / "runs/t/best.safetensors")}
    shutil.copytree(work / "runs", tmp_path / "copy")
    shutil.rmtree(work / "runs")
    elsewhere = tmp_path / "c"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "r.json"
    rc, _, err = cli(capsys, "evaluate", "--model", tmp_path / "copy/s", "--knn-reference", "50", "--out", out,
                     "--db", "", *FAST)
    assert rc == 0, err
    assert list(json.loads(out.read_text())["distillation"]["teachers"]) == ["runs/t"]
    # resume from the copy finds the teacher too
    _train(capsys, "--out", tmp_path / "copy/s", "--resume", "--epochs", "2")
    # the teacher replaced by other weights: refused, naming where it looked
    shutil.copyfile(tmp_path / "copy/s/best.safetensors", tmp_path / "copy/t/best.safetensors")
    rc, _, err = cli(capsys, "evaluate", "--model", tmp_path / "copy/s", "--db", "", *FAST)
    assert rc == 2 and one_line(err, "'runs/t' with sha256", "copy/s/../t", "or other weights"), err


def test_committed_board_runs_evaluate_with_their_teachers(tmp_path, monkeypatch):
    """A board run is a manifest (config, metrics, best.sha256): its weights come from the
    checkpoint store above it and its teacher from beside it, checked by sha256."""
    from kdbench.evaluation import evaluate
    from kdbench.rundir import run_refs, run_weights
    from kdbench.specs import resolve_model

    monkeypatch.chdir(tmp_path)
    run = ROOT / "leaderboards/fashion-mnist/runs/rslad-s0"
    sha = (run / "best.sha256").read_text().strip()
    assert run_weights(run) == ROOT / f"leaderboards/checkpoints/{sha}.safetensors"
    (teacher,), _ = run_refs(run)
    assert Path(teacher).resolve() == (ROOT / "leaderboards/fashion-mnist/runs/teacher-pgd-at").resolve()
    chain = ROOT / "leaderboards/fashion-mnist/runs/takd-s0"
    assert Path(run_refs(chain / "assistant")[0][0]).resolve() == Path(teacher).resolve()
    assert Path(run_refs(chain / "student")[0][0]).resolve() == (chain / "assistant").resolve()
    s, t = resolve_model(str(run)).model, resolve_model(teacher).model
    r = evaluate(s, dataset="fashion-mnist", n=16, attacks=["fgsm"], checks=False, sensitivity=False, device="cpu",
                 teachers=[t], teacher_names=["teacher"], knn_reference=None, progress=False)
    d = r.distillation.teachers["teacher"]
    assert 0.5 < d.teacher_clean_accuracy <= 1 and 0.5 < r.clean_accuracy <= 1


def test_missing_paths_say_no_such_file_or_directory(capsys, tmp_path):
    for args, needle in ((["evaluate", "--model", "runs/nope"], "model: no such file or directory: runs/nope"),
                         (["evaluate", "--model", "smallcnn", "--weights", "w.safetensors", "--dataset", "digits"],
                          "weights file: no such file or directory: w.safetensors"),
                         (["evaluate", "--model", "m.py:f", "--dataset", "digits"],
                          "model: no such file or directory: m.py"),
                         (["train", "--config", "c.yaml", "--out", tmp_path / "x"],
                          "config file: no such file or directory: c.yaml"),
                         (["leaderboard", "--db", tmp_path / "none.db"], "no such file or directory")):
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and one_line(err, needle), (args, err)


def test_a_failed_train_leaves_no_run_directory(capsys, tmp_path):
    out = tmp_path / "runs" / "s"
    rc, _, err = cli(capsys, "train", "--method", "rslad", "--dataset", "digits", "--teacher", tmp_path / "nope",
                     "--out", out, "--no-progress")
    assert rc == 2 and one_line(err, "no such file or directory") and not out.exists(), err
    # a teacher that loads but does not fit the data fails after the directory was made: removed too
    rc, _, err = cli(capsys, "train", "--method", "rslad", "--dataset", "digits", "--teacher", "smallcnn",
                     "--set", "method_params.nope=1", "--out", out, "--no-progress")
    assert rc == 2 and not out.exists(), err


@pytest.mark.subprocess
def test_plugins_are_found_in_the_working_directory(tmp_path):
    """``KDBENCH_PLUGINS=my_module kdbench ...`` run where my_module.py lies, through the
    installed console script (whose own directory is the venv's bin/)."""
    (tmp_path / "my_attacks.py").write_text(
        "from kdbench.attacks.registry import register_attack\n\n"
        "@register_attack('noop-here', defaults={})\n"
        "def noop(eps, norm, seed, num_classes):\n    return lambda model, x, y: x\n")
    script = Path(sys.executable).parent / "kdbench"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(script), "list", "attacks"], cwd=tmp_path, capture_output=True, text=True,
                       env={**env, "KDBENCH_PLUGINS": "my_attacks"}, timeout=300)
    assert r.returncode == 0 and "noop-here" in r.stdout, r.stderr


def test_the_no_argument_default_is_the_embedded_model_on_250_points(capsys, tmp_path):
    """`kdbench evaluate` alone: the embedded PGD-AT digits model, 250 seeded test points (under a
    minute of CPU on 2 cores with the quick suite: benchmarks/readme_times.py)."""
    from kdbench.cli.evaluate import DEFAULT_N

    out = tmp_path / "d.json"
    rc, _, err = cli(capsys, "evaluate", "--attacks", "fgsm", "--no-checks", "--no-sensitivity", "--no-progress",
                     "--db", "", "--out", out)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert DEFAULT_N == 250 and r["n"] == 250 and r["provenance"]["model"]["method"] == "pgd-at"
    rc, _, err = cli(capsys, "evaluate", "--n", "500", *FAST[2:], "--db", "", "--out", out)
    assert rc == 0 and json.loads(out.read_text())["n"] == 500, err
