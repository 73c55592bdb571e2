"""The training engine: inner maximisation, PGD-AT reaching its targets, exact resume, DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import ROOT, ModeSpy, run_cli
from kdbench.attacks.pgd import pgd
from kdbench.config import EvalConfig, TrainConfig
from kdbench.errors import KdbenchError
from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model
from kdbench.training.engine import lr_at, resolve_config, split_indices


@pytest.mark.parametrize("method,n_adv_passes", [("pgd-at", 10), ("trades", 11)])
def test_inner_max_within_eps_box_and_eval_mode(digits, method, n_adv_passes):
    torch.manual_seed(0)
    student = ModeSpy(build_model("smallcnn", 10, 1, 8)).train()
    eps = 0.1
    m = get_method(method)({}, InnerMaxConfig(eps, 0.03, 10), [], 10)
    x, y = digits.test.images(torch.arange(32)), digits.test.y[:32]
    xa = m.perturb(student, x, y)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() > 0.05  # it moved
    assert student.modes == [False] * n_adv_passes and student.training  # eval during attack, restored
    student.modes.clear()
    m.loss(student, x, xa, y)
    assert student.modes and all(student.modes)  # outer loss in train mode


def test_pgd_increases_loss_on_linear_model():
    torch.manual_seed(0)
    w = torch.randn(10, 16)
    model = lambda x: x.flatten(1) @ w.t()  # noqa: E731
    x = torch.rand(8, 1, 4, 4) * 0.5 + 0.25
    y = torch.randint(0, 10, (8,))
    loss = lambda xa: F.cross_entropy(model(xa), y, reduction="sum")  # noqa: E731
    xa = pgd(x, loss, 0.1, 0.025, 20, start="none")
    assert loss(xa) > loss(x)
    # for a linear model the single-step optimum from the centre is x + eps*sign(grad): PGD gets at least close
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(loss(xg), xg)
    assert loss(xa) >= loss((x + 0.1 * g.sign()).clamp(0, 1)) - 1e-4


def test_resolved_defaults_follow_methods_md(digits):
    cfg = resolve_config(TrainConfig(method="trades", dataset="digits"), digits)
    assert cfg.attack.eps == 0.1 and cfg.attack.steps == 10
    assert cfg.attack.step_size == pytest.approx(0.1 * 0.007 / 0.031)
    cfg = resolve_config(TrainConfig(method="pgd-at", dataset="digits", epochs=8), digits)
    assert cfg.attack.step_size == pytest.approx(0.025) and cfg.schedule.milestones == [4, 6]
    assert [lr_at(cfg, e) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cfg.schedule.name = "cosine"
    assert lr_at(cfg, 4) == pytest.approx(0.05)


@pytest.mark.subprocess
def test_clean_only_monitor(digits, tmp_path):
    """eval.pgd_steps = 0: the monitor skips PGD (models selected on clean accuracy); selecting on
    pgd without PGD steps is a config error."""
    with pytest.raises(KdbenchError, match="pgd_steps = 0"):
        resolve_config(TrainConfig(method="pgd-at", dataset="digits", eval=EvalConfig(pgd_steps=0)), digits)
    out = tmp_path / "dd"
    r = run_cli("train", "--method", "natural", "--dataset", "digits", "--epochs", 2, "--train-subset", 64,
                "--set", "eval.pgd_steps=0", "--set", "eval.n=50", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    hist = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in h if k.endswith("_acc")) for h in hist] == [["clean_acc", "train_acc"]] * 2
    assert (out / "best.safetensors").is_file() and "pgd" not in r.stdout


def test_holdout_monitor_split(digits):
    """eval.split = holdout: the monitor reads eval.n training images that no run trains on (the
    same for every seed); train_subset draws from the rest.  The default (test) keeps the split
    every committed run was trained with."""
    train_n = len(digits.train)
    hold = EvalConfig(split="holdout", n=100)
    tr, mon_set, mon = split_indices(digits, TrainConfig(dataset="digits", eval=hold))
    assert mon_set is digits.train and len(mon) == 100 and len(tr) == train_n - 100
    assert set(tr.tolist()).isdisjoint(mon.tolist()) and len(set(tr.tolist()) | set(mon.tolist())) == train_n
    a = split_indices(digits, TrainConfig(dataset="digits", eval=hold, train_subset=500, seed=1))
    b = split_indices(digits, TrainConfig(dataset="digits", eval=hold, train_subset=500, seed=2))
    assert torch.equal(a[2], mon) and torch.equal(b[2], mon)
    assert len(a[0]) == 500 and set(a[0].tolist()).isdisjoint(mon.tolist()) and not torch.equal(a[0], b[0])
    tr, mon_set, mon = split_indices(digits, TrainConfig(dataset="digits", train_subset=500, seed=1))
    assert mon_set is digits.test and torch.equal(mon, digits.eval_indices(500, seed=0)[0])
    assert torch.equal(tr, digits.eval_indices(500, seed=1, split="train")[0])
    with pytest.raises(KdbenchError, match="only 1197 training images are left"):
        split_indices(digits, TrainConfig(dataset="digits", eval=hold, train_subset=1200))
    with pytest.raises(KdbenchError, match="eval.n = 1297"):
        split_indices(digits, TrainConfig(dataset="digits", eval=EvalConfig(split="holdout", n=train_n)))
    with pytest.raises(KdbenchError, match="eval.split must be test or holdout"):
        resolve_config(TrainConfig(dataset="digits", eval=EvalConfig(split="val")), digits)


@pytest.mark.subprocess
def test_holdout_monitor_run_records_and_measures_held_out_images(digits, tmp_path):
    """A run monitored on held-out training images: its recorded clean accuracy is the best
    model's accuracy on exactly those images, and config.yaml names the split and its hash."""
    import yaml
    from kdbench.data import index_hash
    from kdbench.specs import resolve_model

    out = tmp_path / "held"
    r = run_cli("train", "--method", "natural", "--dataset", "digits", "--epochs", 1, "--train-subset", 300,
                "--set", "eval.split=holdout", "--set", "eval.n=200", "--set", "eval.pgd_steps=0", "--out", out,
                "--no-progress")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    mon, pool = digits.holdout_indices(200)
    assert cfg["resolved"]["monitor"] == {"split": "holdout", "n": 200, "indices_sha256": index_hash(mon)}
    assert cfg["resolved"]["train_size"] == 300
    model = resolve_model(str(out)).model
    with torch.no_grad():
        correct = (model(digits.train.images(mon)).argmax(1) == digits.train.y[mon]).sum().item()
    hist = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert hist["clean_acc"] * 200 == pytest.approx(correct) and correct > 40  # above chance (20)


def test_pgd_at_on_digits_reaches_targets(digits_teacher):
    """PGD-AT on digits, 3 epochs: over 80 % clean and over 20 % PGD-20 accuracy (eps 0.1)."""
    hist = [json.loads(l) for l in (digits_teacher / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 3
    assert hist[-1]["clean_acc"] > 0.80 and hist[-1]["pgd_acc"] > 0.20
    assert hist[-1]["pgd_acc"] < hist[-1]["clean_acc"]
    assert hist[0]["student_forward_images"] == 1297 * 11  # 10 attack passes + 1 loss pass per image
    cfg = (digits_teacher / "config.yaml").read_text()
    assert "dataset_info" in cfg and "num_classes: 10" in cfg


def _train_args(out, epochs=3, method="pgd-at"):
    return ["train", "--method", method, "--dataset", "digits", "--epochs", epochs, "--train-subset", 640,
            "--out", out, "--no-progress", "--seed", "7"]


@pytest.mark.subprocess
def test_kill9_then_resume_gives_identical_weights(tmp_path):
    ref = run_cli(*_train_args(tmp_path / "ref", method="trades"))  # not the default method
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    env = {**os.environ, "KDBENCH_DATA_DIR": os.environ["KDBENCH_DATA_DIR"]}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", *map(str, _train_args(out, method="trades"))], cwd=str(ROOT),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 3, "the kill should land before the run finished"
    res = run_cli("train", "--out", out, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"trained trades -> {out}" in res.stdout  # named from the run's config
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "ref" / "metrics.jsonl").read_text().count("\n") == 3
    ra = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["pgd_acc"] for r in ra] == [r["pgd_acc"] for r in rb]


@pytest.mark.subprocess
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "kdbench", "train", "--method", "pgd-at", "--dataset", "digits", "--epochs", "2",
           "--out", str(out), "--no-progress", "--batch-size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = (out / "config.yaml").read_text()
    assert "world_size: 2" in cfg
    hist = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    # each rank saw half of the 1 297 images (padded to 1 298): the reduced count covers them all
    assert hist[0]["clean_acc"] > 0.5
    assert (out / "model.safetensors").exists() and (out / "state.pt").exists()
