"""docs/guarantees.md, from the command line: untrusted code is not run, paths stay confined,
writes are atomic, and every bad input or fault is one line and exit 2 with nothing lost."""
import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli import main
from kdbench.errors import KdbenchError

FAST = ["--n", "8", "--attacks", "fgsm", "--no-checks", "--no-sensitivity", "--no-progress"]


def cli(capsys, *args):
    """``kdbench ARGS`` in-process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str, *needles) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("kdbench: error: ") and all(n in lines[0] for n in needles)


def payload(tmp_path) -> tuple:
    """A factory file whose import leaves a marker: proof that code ran."""
    marker = tmp_path / "PAYLOAD-RAN"
    f = tmp_path / "payload.py"
    f.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                 "from kdbench.models import build_model\n"
                 "def make(num_classes=10, in_channels=1, input_size=8):\n"
                 "    return build_model('smallcnn', num_classes, in_channels, input_size)\n")
    return f, marker


# --- 4. no code runs that the user did not name --------------------------------------------

def test_a_run_config_naming_a_payload_teacher_is_not_imported(capsys, tmp_path, digits_teacher):
    run = tmp_path / "run"
    shutil.copytree(digits_teacher, run)
    f, marker = payload(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["teachers"] = [f"{f}:make"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc, _, err = cli(capsys, "evaluate", "--model", run, "--db", "", *FAST)
    assert rc == 2 and one_line(err, "names code to import", "--trust-code") and not marker.exists()
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    assert rc == 2 and one_line(err, "names code to import") and not marker.exists()
    # named by the user: imported
    rc, _, err = cli(capsys, "evaluate", "--model", run, "--db", "", "--trust-code", "--knn-reference", "0", *FAST)
    assert rc == 0 and marker.exists(), err


def test_row_names_and_chain_roles_cannot_escape_the_output_directory(capsys, tmp_path, digits):
    from kdbench import evaluate
    from kdbench.evaluation.store import ResultStore
    from kdbench.leaderboard import export_checkpoints
    from kdbench.models import build_model
    from kdbench.weights import save_weights, sha256_file

    model = build_model("smallcnn", 10, 1, 8)
    db = tmp_path / "r.db"
    evaluate(model, dataset=digits, n=8, attacks=["fgsm"], device="cpu", checks=False, sensitivity=False,
             store=ResultStore(db),
             provenance={"model": {"spec": "m", "run": {"name": "../../../escape-s0", "row": "../../../escape",
                                                        "seed": 0, "method": "pgd-at"}}})
    out = tmp_path / "board" / "results"
    rc, _, err = cli(capsys, "leaderboard", "--db", db, "--results", out)
    assert rc == 0, err
    written = [p for p in tmp_path.rglob("*.json")]
    assert written and all(out in p.parents for p in written)
    # a chain role from a run's config
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    save_weights(model, run / "best.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "smallcnn", "dataset_info": {},
                                                     "chain": {"root": "../../../x", "role": "../../../../y"}}))
    dest = tmp_path / "board" / "runs"
    rows = [{"checkpoint": str(run / "best.safetensors"), "sha256": sha256_file(run / "best.safetensors")}]
    (d,) = export_checkpoints(rows, dest)
    assert dest in d.parents and (d / "best.safetensors").is_file()


def test_a_board_copies_only_verified_files(tmp_path):
    from kdbench.leaderboard import export_checkpoints
    from kdbench.models import build_model
    from kdbench.weights import save_weights, sha256_file

    run = tmp_path / "r"
    run.mkdir()
    save_weights(build_model("smallcnn", 10, 1, 8), run / "best.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "smallcnn", "dataset_info": {}}))
    sha = sha256_file(run / "best.safetensors")
    with pytest.raises(KdbenchError, match="sha256 differs"):
        export_checkpoints([{"checkpoint": str(run / "best.safetensors"), "sha256": "0" * 64}], tmp_path / "a")
    secret = tmp_path / "secret"
    secret.write_text("private")
    (run / "metrics.jsonl").symlink_to(secret)
    with pytest.raises(KdbenchError, match="symbolic link"):
        export_checkpoints([{"checkpoint": str(run / "best.safetensors"), "sha256": sha}], tmp_path / "b")
    (run / "metrics.jsonl").unlink()
    (run / "best.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(KdbenchError, match="not a valid safetensors"):
        export_checkpoints([{"checkpoint": str(run / "best.safetensors"), "sha256": None}], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# --- 5. atomic writes; faults are one line, before the work, with nothing lost -----------------

def marker_model(tmp_path):
    """A model spec whose factory leaves a marker: proof that the evaluation began."""
    marker = tmp_path / "MODEL-BUILT"
    f = tmp_path / "m.py"
    f.write_text(f"from pathlib import Path\nfrom kdbench.models import build_model\n"
                 "def make(num_classes, in_channels, input_size):\n"
                 f"    Path({str(marker)!r}).write_text('built')\n"
                 "    return build_model('smallcnn', num_classes, in_channels, input_size)\n")
    return f"{f}:make", marker


def good_store(capsys, tmp_path) -> Path:
    db = tmp_path / "good.db"
    rc, _, err = cli(capsys, "evaluate", "--db", db, *FAST)
    assert rc == 0, err
    return db


@pytest.mark.parametrize("fault", ["foreign-file", "foreign-sqlite", "truncated", "corrupted", "directory"])
def test_a_bad_store_is_refused_before_the_evaluation(capsys, tmp_path, fault):
    spec, marker = marker_model(tmp_path)
    db = tmp_path / "bad.db"
    if fault == "foreign-file":
        db.write_text("name,score\nalice,3\n")
    elif fault == "foreign-sqlite":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE users (id INTEGER, email TEXT)")
        con.commit()
        con.close()
    elif fault in ("truncated", "corrupted"):
        data = bytearray(good_store(capsys, tmp_path).read_bytes())
        if fault == "truncated":
            data = data[:len(data) // 3]
        else:
            data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(4096)
        db.write_bytes(bytes(data))
    else:
        db.mkdir()
    before = db.read_bytes() if db.is_file() else None
    rc, _, err = cli(capsys, "evaluate", "--model", spec, "--dataset", "digits", "--db", db, *FAST)
    assert rc == 2 and one_line(err, "results store"), err
    assert not marker.exists()  # refused before any model was built
    assert (db.read_bytes() if db.is_file() else None) == before  # left as it was
    if fault != "directory":
        rc, _, err = cli(capsys, "leaderboard", "--db", db)
        assert rc == 2 and one_line(err, "results store")


def test_out_faults_are_refused_before_the_evaluation(capsys, tmp_path):
    spec, marker = marker_model(tmp_path)
    base = ["evaluate", "--model", spec, "--dataset", "digits", "--db", "", *FAST]
    (tmp_path / "adir").mkdir()
    for out, needle in [(tmp_path / "adir", "is a directory"), (tmp_path / "missing" / "r.json", "does not exist")]:
        rc, _, err = cli(capsys, *base, "--out", out)
        assert rc == 2 and one_line(err, needle), err
    assert not marker.exists()


@contextmanager
def tmpfs(path: Path, size="64k", ro=False):
    """A tiny tmpfs (root only): a full disk, or a read-only filesystem."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def test_read_only_store_and_out_are_refused_before_the_evaluation(capsys, tmp_path):
    spec, marker = marker_model(tmp_path)
    db = good_store(capsys, tmp_path)
    if _can_mount():
        with tmpfs(tmp_path / "ro", size="1m") as ro:
            shutil.copy(db, ro / "r.db")
            (ro / "old.json").write_text("{}")
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            _read_only_checks(capsys, spec, marker, ro)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        shutil.copy(db, ro / "r.db")
        (ro / "old.json").write_text("{}")
        (ro / "r.db").chmod(0o444)
        ro.chmod(0o555)
        try:
            _read_only_checks(capsys, spec, marker, ro)
        finally:
            ro.chmod(0o755)


def _read_only_checks(capsys, spec, marker, ro):
    before = (ro / "r.db").read_bytes()
    rc, _, err = cli(capsys, "evaluate", "--model", spec, "--dataset", "digits", "--db", ro / "r.db", *FAST)
    assert rc == 2 and one_line(err, "results store"), err
    rc, _, err = cli(capsys, "evaluate", "--model", spec, "--dataset", "digits", "--db", "", "--out",
                     ro / "old.json", *FAST)
    assert rc == 2 and one_line(err, "not writable"), err
    assert not marker.exists() and (ro / "r.db").read_bytes() == before
    rc, out, err = cli(capsys, "leaderboard", "--db", ro / "r.db")  # reading a read-only store is fine
    assert rc == 0, err


@pytest.mark.skipif(not _can_mount(), reason="a full disk needs a tmpfs mount (root); "
                                             "test_a_full_disk_while_writing_out_loses_nothing covers the rest")
def test_a_full_disk_is_one_line_and_loses_nothing(capsys, tmp_path):
    db = tmp_path / "r.db"
    with tmpfs(tmp_path / "full", size="64k") as full:
        old = full / "r.json"
        old.write_text('{"earlier": true}')
        try:  # fill the disk
            with open(full / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 1024)
                    f.flush()
        except OSError:
            pass
        rc, out, err = cli(capsys, "evaluate", "--db", db, "--out", old, *FAST)
        assert rc == 2 and one_line(err, "No space left on device"), err
        assert old.read_text() == '{"earlier": true}'  # the earlier file whole
        assert not [p for p in full.iterdir() if ".tmp" in p.name]  # no temp file left
        assert "fgsm" in out  # the table was printed: nothing computed is lost
        assert len(sqlite3.connect(db).execute("SELECT id FROM results").fetchall()) == 1  # and stored
        rc, _, err = cli(capsys, "evaluate", "--db", full / "new.db", *FAST)  # a store on a full disk
        assert rc == 2 and one_line(err, "results store"), err


def test_a_full_disk_while_writing_out_loses_nothing(capsys, tmp_path, monkeypatch):
    """The same promise without a mount: the rename's write fails with ENOSPC."""
    import errno

    import kdbench.fsutil as fs

    old = tmp_path / "r.json"
    old.write_text('{"earlier": true}')
    real = fs.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs.os, "fsync", full)
    rc, out, err = cli(capsys, "evaluate", "--db", tmp_path / "r.db", "--out", old, *FAST)
    monkeypatch.setattr(fs.os, "fsync", real)
    assert rc == 2 and one_line(err, "No space left on device"), err
    assert old.read_text() == '{"earlier": true}' and "fgsm" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db", "r.json"]


def test_stale_temp_files_from_a_kill_are_cleaned(capsys, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".r.json.tmp{dead.pid}"
    live = tmp_path / f".other.json.tmp{os.getpid()}"
    stale.write_text("half")
    live.write_text("in use")
    rc, _, err = cli(capsys, "evaluate", "--db", "", "--out", tmp_path / "r.json", *FAST)
    assert rc == 0, err
    assert not stale.exists() and live.exists() and json.loads((tmp_path / "r.json").read_text())["n"] == 8


# --- 6. every CLI input validated at the boundary ----------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--set", "epochs=ten"], "epochs: expected int"), (["--set", "optimizer.lr=fast"], "lr: expected float"),
    (["--set", "seed=1.5"], "seed: expected int"), (["--set", "teachers=5"], "expected a list"),
    (["--set", "nosuch.key=1"], "unknown key"), (["--set", "augment=maybe"], "augment: expected bool"),
    (["--set", "epochs"], "KEY=VALUE"), (["--epochs", "x"], "invalid int value"),
])
def test_train_set_is_type_checked(capsys, tmp_path, args, needle):
    rc, _, err = cli(capsys, "train", "--method", "pgd-at", "--dataset", "digits", "--out", tmp_path / "r", *args)
    assert rc == 2 and one_line(err, needle), err
    assert not (tmp_path / "r").exists()


def test_bad_resume_points_and_conflicting_resumes_are_one_line(capsys, tmp_path, digits_teacher):
    run = tmp_path / "run"
    shutil.copytree(digits_teacher, run)
    config = (run / "config.yaml").read_bytes()
    for args, needle in [(["--method", "trades"], "its method is 'pgd-at', not 'trades'"),
                         (["--set", "method_params.beta=3"], "method_params.beta"),
                         (["--config", run / "config.yaml"], "drop --config")]:
        rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", *args)
        assert rc == 2 and one_line(err, needle), err
    state = run / "state.pt"
    good = state.read_bytes()
    for bad, needle in [(good[:len(good) // 2], "not a usable resume point"),
                        (None, "not a usable resume point")]:
        if bad is None:  # well-formed, but the wrong shapes
            st = torch.load(state, weights_only=True)
            st["model"] = {k: torch.zeros(3) for k in st["model"]}
            torch.save(st, state)
        else:
            state.write_bytes(bad)
        rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "5", "--no-progress")
        assert rc == 2 and one_line(err, needle), err
        assert (run / "config.yaml").read_bytes() == config  # nothing touched
        state.write_bytes(good)


def _result(capsys, tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    rc, _, err = cli(capsys, "evaluate", "--db", "", "--out", out, *FAST, *extra)
    assert rc == 0, err
    return out


def test_check_refuses_results_that_are_not_comparable(capsys, tmp_path):
    a = _result(capsys, tmp_path, "a")
    b = _result(capsys, tmp_path, "b", "--eps", "0.2")
    rc, _, err = cli(capsys, "check", a, "--baseline", b)
    assert rc == 2 and one_line(err, "differ in eps", "--allow-mismatch"), err
    d = json.loads(a.read_text())
    d["provenance"]["dataset"]["name"] = "mnist"
    c = tmp_path / "c.json"
    c.write_text(json.dumps(d))
    rc, _, err = cli(capsys, "check", a, "--baseline", c)
    assert rc == 2 and one_line(err, "differ in dataset"), err
    rc, out, err = cli(capsys, "check", a, "--baseline", c, "--allow-mismatch")
    assert rc == 0 and "no regression" in out, err


@pytest.mark.parametrize("content, needle", [
    ("name,dataset,threat,eps,n,worst_case\nm,digits,Linf,abc,8,0.5\n", "column eps is 'abc'"),
    ("name,dataset,threat,eps,n,worst_case\nm,digits,Linf,0.1,8,oops\n", "column worst_case"),
    ("a,b\n1,2\n", "not a kdbench leaderboard CSV"), ("", "has no rows"),
])
def test_bad_csv_baselines_are_one_line(capsys, tmp_path, content, needle):
    a = _result(capsys, tmp_path, "a")
    csv = tmp_path / "board.csv"
    csv.write_text(content)
    rc, _, err = cli(capsys, "check", a, "--baseline", csv, "--row", "m")
    assert rc == 2 and one_line(err, needle), err


def test_bad_result_files_are_one_line(capsys, tmp_path):
    a = _result(capsys, tmp_path, "a")
    for content in ["{", "[]", '{"clean_accuracy": 1, "attacks": 5}', "\x00\xff garbage"]:
        bad = tmp_path / "bad.json"
        bad.write_bytes(content.encode("latin-1"))
        for args in (["check", bad, "--baseline", a], ["check", a, "--baseline", bad]):
            rc, _, err = cli(capsys, *args)
            assert rc == 2 and one_line(err), (content, err)


def test_a_comma_between_an_attacks_parameters_says_what_to_write(capsys, tmp_path):
    """``pgd:steps=5,step_size=0.002`` splits into an attack and a bare parameter: one line naming
    the ';' form, before any model is built (the marker model is never imported)."""
    spec, marker = marker_model(tmp_path)
    rc, _, err = cli(capsys, "evaluate", "--model", spec, "--dataset", "digits", "--db", "", "--n", "4",
                     "--attacks", "fgsm,pgd:steps=5,step_size=0.002", "--no-progress")
    assert rc == 2 and one_line(err, "'step_size=0.002' is not an attack", "'pgd:steps=5;step_size=0.002'"), err
    assert not marker.exists()
    # an ensemble's members (key=value with a member's own ':') stay one attack
    from kdbench.cli.evaluate import split_attacks

    assert split_attacks("min-l0:members=fmn-l0+fmn-l0:steps=1000,pgd:steps=5;step_size=0.002") == \
        ["min-l0:members=fmn-l0+fmn-l0:steps=1000", "pgd:steps=5,step_size=0.002"]


def test_an_architecture_without_weights_is_refused_unless_random_weights(capsys, tmp_path):
    """``--model smallcnn`` alone would evaluate a random initialisation: refused in one line;
    ``--random-weights`` says it is meant (chance-level accuracy on digits)."""
    rc, _, err = cli(capsys, "evaluate", "--model", "smallcnn", "--dataset", "digits", "--db", "", *FAST)
    assert rc == 2 and one_line(err, "--model smallcnn is an architecture without --weights", "--random-weights"), err
    out = tmp_path / "r.json"
    rc, _, err = cli(capsys, "evaluate", "--model", "smallcnn", "--random-weights", "--dataset", "digits", "--db", "",
                     "--out", out, *FAST)
    assert rc == 0, err
    assert json.loads(out.read_text())["clean_accuracy"] < 0.5


def test_eps_takes_fractions_and_l2_has_its_own_default(capsys, tmp_path):
    out = tmp_path / "f.json"
    rc, _, err = cli(capsys, "evaluate", "--eps", "8/255", "--db", "", "--out", out, *FAST)
    assert rc == 0, err
    assert json.loads(out.read_text())["config"]["eps"] == pytest.approx(8 / 255, rel=1e-12)
    rc, _, err = cli(capsys, "evaluate", "--eps", "8/x", "--db", "", *FAST)
    assert rc == 2 and one_line(err, "not a number or a fraction such as 8/255: '8/x'"), err
    rc, _, err = cli(capsys, "evaluate", "--norm", "L2", "--db", "", "--out", out, *FAST[:2], "--attacks", "pgd:steps=2",
                     *FAST[4:])
    assert rc == 0, err
    assert json.loads(out.read_text())["config"]["eps"] == 0.5  # digits' L2 default, not its L-inf 0.1
    from kdbench.data import get_dataset

    assert get_dataset("fashion-mnist").info.default_eps("L2") == 1.5
    with pytest.raises(KdbenchError, match="has no default L2 budget: give --eps"):
        get_dataset("digits").info.__class__("npz:x", 10, 1, 8, 0.1).default_eps("L2")


def test_list_names_attacks_and_suites(capsys):
    rc, out, _ = cli(capsys, "list", "attacks")
    assert rc == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "minimal L0" in rows["cw-l0"] and "torchattacks" in rows["pgd"] and "min-linf" in rows
    rc, out, _ = cli(capsys, "list", "suites")
    from kdbench.attacks.suites import SUITES

    assert rc == 0 and [line.split()[0] for line in out.splitlines()[1:]] == list(SUITES)
    assert "fgsm, pgd, cw-linf, apgd-ce, apgd-t" in out


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "points per resume/shard unit (default: 1024)" in out
    assert "images per attack batch (default: 256)" in out and "(default: Linf)" in out
