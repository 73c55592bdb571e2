"""Distillation methods I: inner maximisation (budget, box, model modes), MTARD's weight
trajectory, one epoch of every method on digits from kdbench-trained teachers, TA chains."""
import json

import pytest
import torch
from conftest import ModeSpy

from kdbench import losses
from kdbench.config import TrainConfig
from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model
from kdbench.training import train
from kdbench.training.chain import train_chain


@pytest.fixture(scope="module")
def natural_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("nat") / "natural"
    train(TrainConfig(method="natural", dataset="digits", epochs=2), out, progress=False)
    return out


TRAIN_MODE_ATTACK = {"ard": True, "iad": True, "iad-ii": True, "rslad": False, "mtard": False, "adaad": False,
                     "adaiad": False}


@pytest.mark.parametrize("name", sorted(TRAIN_MODE_ATTACK))
def test_inner_max_budget_box_and_mode(name, digits):
    torch.manual_seed(0)
    student = ModeSpy(build_model("smallcnn", 10, 1, 8)).train()
    n_t = get_method(name).num_teachers[0]
    teachers = [ModeSpy(build_model("smallcnn", 10, 1, 8)).eval() for _ in range(n_t)]
    m = get_method(name)({}, InnerMaxConfig(0.1, 0.025, 10), teachers, 10)
    m.begin_epoch(0, 10)
    x, y = digits.test.images(torch.arange(16)), digits.test.y[:16]
    xa = m.perturb(student, x, y)
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() > 0.02
    assert set(student.modes) == {TRAIN_MODE_ATTACK[name]}  # the official mode during the attack
    assert len(student.modes) == 10 and student.training
    if name in ("adaad", "adaiad"):  # both models on x', gradient through the teacher
        assert len(teachers[0].modes) == 10 and teachers[0].modes[0] is False
    student.modes.clear()
    loss, logits = m.loss(student, x, xa, y)
    assert loss.requires_grad and torch.isfinite(loss) and all(student.modes)


def test_mtard_weight_trajectory(digits):
    torch.manual_seed(0)
    student = build_model("smallcnn", 10, 1, 8).train()
    t_adv, t_nat = build_model("smallcnn", 10, 1, 8).eval(), build_model("smallcnn", 10, 1, 8).eval()
    m = get_method("mtard")({}, InnerMaxConfig(0.1, 0.025, 2), [t_adv, t_nat], 10)
    m.begin_epoch(0, 10, lr_scale=1.0)
    expect_w, l0 = 0.5, None
    for step in range(4):
        x, y = digits.test.images(torch.arange(step * 8, step * 8 + 8)), digits.test.y[step * 8:step * 8 + 8]
        xa = m.perturb(student, x, y)
        with torch.no_grad():
            la, ln = losses.mtard_terms(s_nat=student(x), s_adv=student(xa), t_nat=t_nat(x), t_adv=t_adv(xa),
                                        kl_scale=1.0)
        la, ln = la.item(), ln.item()
        l0 = l0 or (la, ln)
        _, expect_w = losses.mtard_update(expect_w, la, ln, *l0, eta=0.025, beta=1.0)
        m.loss(student, x, xa, y)
        assert m.w_nat == pytest.approx(expect_w, rel=1e-5)
    assert m.w_nat != 0.5  # it moved after the first step
    m.begin_epoch(5, 10, lr_scale=0.1)
    assert m.eta == pytest.approx(0.0025)  # eta decays with the learning rate
    st = m.state_dict()
    m2 = get_method("mtard")({}, InnerMaxConfig(0.1, 0.025, 2), [t_adv, t_nat], 10)
    m2.load_state_dict(st)
    assert m2.w_nat == m.w_nat and m2.l0 == m.l0


def test_released_schedule_switches():
    ard = get_method("ard")({"released_lr_schedule": True}, InnerMaxConfig(0.1, 0.025, 10), [torch.nn.Identity()], 10)
    assert [ard.adjust_lr(e, 200, None, 0.1, [100, 150], 0.1) for e in (99, 100, 160)] == \
        pytest.approx([0.1, 0.01, 0.01])
    takd = get_method("takd")({"released_lr_rule": True}, InnerMaxConfig(0.1, 0.025, 10), [torch.nn.Identity()], 10)
    assert [takd.adjust_lr(e, 200, 0.1, 0.1, [], 0.1) for e in (0, 149, 150)] == [0.01, 0.01, 0.001]


@pytest.mark.parametrize("name", ["ard", "iad", "rslad", "adaad", "adaiad", "iad-ii", "mtard", "dd", "takd"])
def test_one_epoch_on_digits_beats_chance(name, digits_teacher, natural_teacher, tmp_path):
    teachers = [str(digits_teacher)]
    if get_method(name).num_teachers[0] == 2:
        teachers.append(str(natural_teacher))
    params = {"T": 5.0} if name in ("dd", "takd") else {}
    cfg = TrainConfig(method=name, dataset="digits", epochs=1, teachers=teachers, method_params=params)
    cfg.eval.n = 300
    hist = train(cfg, tmp_path / name, progress=False)
    assert hist[-1]["clean_acc"] > 0.3, hist[-1]  # chance is 0.1
    saved = (tmp_path / name / "config.yaml").read_text()
    assert str(digits_teacher) in saved


def test_ta_chain_three_linked_run_dirs(tmp_path):
    cfg = TrainConfig(method="takd", dataset="digits", epochs=1, method_params={"T": 5.0})
    cfg.eval.n = 100
    dirs = train_chain(cfg, tmp_path / "chain", links=2, progress=False)
    assert [d.name for d in dirs] == ["teacher", "assistant", "student"]
    import yaml

    cfgs = [yaml.safe_load((d / "config.yaml").read_text()) for d in dirs]
    assert cfgs[0]["method"] == "dd" and cfgs[0]["teachers"] == []
    assert cfgs[1]["teachers"] == [str(dirs[0])] and cfgs[2]["teachers"] == [str(dirs[1])]
    assert [c["chain"]["index"] for c in cfgs] == [0, 1, 2]
    assert all((d / "best.safetensors").exists() for d in dirs)
    hist = [json.loads(l) for l in (dirs[2] / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["clean_acc"] > 0.2
    from kdbench.rundir import run_summary

    # leaderboard rows name the chain after its root and charge the student for the assistant's training
    summ = [run_summary(d, c) for d, c in zip(dirs, cfgs)]
    assert [s["name"] for s in summ] == ["chain/teacher", "chain/assistant", "chain"]
    secs = [sum(json.loads(l)["seconds"] for l in (d / "metrics.jsonl").read_text().splitlines()) for d in dirs]
    assert summ[2]["train_seconds"] == pytest.approx(secs[1] + secs[2])
    assert summ[1]["train_seconds"] == pytest.approx(secs[1]) and summ[2]["epochs_done"] == 1
