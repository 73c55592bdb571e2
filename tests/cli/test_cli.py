"""Bad input: one line on stderr, exit code 2, no traceback."""
import numpy as np
import pytest

from conftest import run_cli


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-500:])
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:"), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.subprocess
def test_bad_train_inputs(tmp_path, digits_teacher):
    out = tmp_path / "r"
    _one_line_error(run_cli("train", "--method", "nosuch", "--dataset", "digits", "--out", out), "unknown method")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "nosuch", "--out", out), "unknown dataset")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "digits", "--model", "nonet", "--out", out),
                    "unknown model")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "cifar10", "--out", out,
                            env={"KDBENCH_DATA_DIR": str(tmp_path / "empty")}), "cifar-10-batches-py")
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "digits", "--out", f / "run"),
                    "not writable")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "digits", "--epochs", "x", "--out", out),
                    "invalid int value")
    _one_line_error(run_cli("train", "--method", "pgd-at", "--dataset", "digits", "--config", tmp_path / "no.yaml",
                            "--out", out), "config file: no such file or directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: pgd-at\nepochz: 3\n")
    _one_line_error(run_cli("train", "--config", bad, "--out", out), "unknown key(s) ['epochz']")
    _one_line_error(run_cli("train", "--method", "trades", "--dataset", "digits", "--set", "method_params.gamma=1",
                            "--out", out), "unknown parameter(s) ['gamma']")
    _one_line_error(run_cli("train", "--method", "ard", "--dataset", "digits", "--teacher", tmp_path,
                            "--set", "teachers=[]", "--out", out), "teachers is given twice")
    assert not (out / "state.pt").exists()


@pytest.mark.subprocess
def test_teacher_class_count_mismatch(tmp_path, digits_teacher):
    rng = np.random.RandomState(0)
    npz = tmp_path / "three.npz"
    np.savez(npz, x_train=rng.rand(12, 1, 8, 8).astype(np.float32), y_train=np.arange(12) % 3,
             x_test=rng.rand(6, 1, 8, 8).astype(np.float32), y_test=np.arange(6) % 3)
    res = run_cli("train", "--method", "pgd-at", "--dataset", f"npz:{npz}", "--teacher", digits_teacher,
                  "--epochs", "1", "--out", tmp_path / "r")
    _one_line_error(res, "outputs 10 classes", "has 3")


@pytest.mark.subprocess
def test_existing_run_needs_resume(tmp_path, digits_teacher):
    res = run_cli("train", "--method", "pgd-at", "--dataset", "digits", "--out", digits_teacher)
    _one_line_error(res, "already holds a run", "--resume")


@pytest.mark.subprocess
def test_list_and_help():
    res = run_cli("list")
    assert res.returncode == 0 and "pgd-at" in res.stdout and "fashion-mnist" in res.stdout
    assert "wrn-34-10" in res.stdout
    assert run_cli("--help").returncode == 0


@pytest.mark.subprocess
def test_plugins_register_user_methods(tmp_path):
    (tmp_path / "myplug.py").write_text(
        "from kdbench.methods import METHODS\nfrom kdbench.methods.pgd_at import PGDAT\n\n"
        "@METHODS.register('my-at')\nclass MyAT(PGDAT):\n    name = 'my-at'\n")
    r = run_cli("list", "methods", env={"PYTHONPATH": str(tmp_path), "KDBENCH_PLUGINS": "myplug"})
    assert r.returncode == 0 and "my-at," in r.stdout, r.stdout
    r = run_cli("list", env={"KDBENCH_PLUGINS": "no_such_plugin"})
    assert r.returncode == 2 and "KDBENCH_PLUGINS" in r.stderr and len(r.stderr.splitlines()) == 1
