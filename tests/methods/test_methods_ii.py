"""Distillation methods II: DARHT, SmaraAD(++), AGKD-BML -- losses against methods.md section 12
and hand-derived values, the STF head, Monte-Carlo dropout, CAMs and attention maps on known
weights, and one epoch of each method on digits from kdbench-trained teachers."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ModeSpy

from kdbench import losses
from kdbench.config import TrainConfig, merge
from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model, classifier_of, forward_all
from kdbench.specs import resolve_model
from kdbench.models.stf import STFStudent
from kdbench.training import train

S = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_soft_rank_and_spearman_worked_numbers():
    v = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(losses.soft_rank(v, 1.0), torch.tensor([2.1119, 1.5, 0.8881]), atol=1e-4)
    assert torch.allclose(losses.soft_rank(v, 10.0), torch.tensor([2.49995, 1.5, 0.50005]), atol=1e-5)
    assert losses.soft_spearman(v, v.flip(0), 1.0).item() == pytest.approx(0.25126531, abs=1e-6)
    assert losses.soft_spearman(v, v.flip(0), 10.0).item() == pytest.approx(-0.99981840, abs=1e-6)
    # per sample over classes, differentiable
    u = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], requires_grad=True)
    rho = losses.soft_spearman(u, torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), 1.0)
    assert rho.shape == (2,) and rho[0] > rho[1]
    rho.sum().backward()
    assert u.grad.abs().sum() > 0


def test_darht_weights_and_loss():
    y = torch.tensor([0, 2])
    # one teacher, unnormalised (the released code): exp(-CE) with mean CE 0.75310913
    assert losses.darht_weights([T], y, normalise=False).item() == pytest.approx(0.47090019, abs=1e-6)
    assert losses.darht_weights([T], y, normalise=True).item() == pytest.approx(1.0)
    T2 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    ce = torch.tensor([F.cross_entropy(T, y).item(), F.cross_entropy(T2, y).item()])
    w = torch.exp(-ce) / torch.exp(-ce).sum()
    assert torch.allclose(losses.darht_weights([T, T2], y), w)
    stf = torch.cat([S, S.flip(1)], 1)  # teacher 0's block = S, teacher 1's = S reversed
    paper = losses.darht_loss(s_adv=S, stf=stf, t_adv=[T, T2], y=y, ce=1.0, kd=1.0, normalise=True,
                               kl_direction="student")

    def kl_rows(p_logits, q_logits):  # KL(softmax(p) || softmax(q)), batch mean, written out
        p, q = F.softmax(p_logits, 1), F.softmax(q_logits, 1)
        return (p * (p.log() - q.log())).sum(1).mean()

    expect = F.cross_entropy(S, y) + w[0] * kl_rows(S, T) + w[1] * kl_rows(S.flip(1), T2)
    assert paper.item() == pytest.approx(expect.item(), rel=1e-6)
    code = losses.darht_loss(s_adv=S, stf=stf.view(2, 2, 3), t_adv=[T, T2], y=y, ce=0.0, kd=1.0,
                             normalise=False, kl_direction="teacher")
    expect = torch.exp(-ce[0]) * kl_rows(T, S) + torch.exp(-ce[1]) * kl_rows(T2, S.flip(1))
    assert code.item() == pytest.approx(expect.item(), rel=1e-6)


def test_angular_triplet_and_label_smoothing_worked_numbers():
    a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert losses.angular_distance(a, p).item() == pytest.approx(0.29289322, abs=1e-6)
    assert losses.angular_distance(a, n).item() == pytest.approx(1.0)
    assert losses.angular_distance(a, -a).item() == pytest.approx(0.0, abs=1e-6)  # |cos|
    reg = 1e-3 * ((a ** 2).mean() + (p ** 2).mean() + (n ** 2).mean())
    assert losses.bml_triplet(a, p, n).item() == pytest.approx(reg.item(), abs=1e-7)  # hinge 0
    # swapping positive and negative: hinge = 0.03 + 1 - 0.29289322
    assert losses.bml_triplet(a, n, p).item() == pytest.approx(0.03 + 1 - 0.29289322 + reg.item(), abs=1e-6)
    logits = torch.zeros(1, 10)
    y = torch.tensor([3])
    # uniform prediction: -sum t log(1/10) = log 10 whatever the target
    assert losses.label_smoothing_ce(logits, y, 0.5).item() == pytest.approx(math.log(10), abs=1e-6)
    logits = torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    target = torch.full((4, 10), 0.5 / 9)
    target[torch.arange(4), y] = 0.5
    assert target[0, 1].item() == pytest.approx(0.0555556, abs=1e-7)
    expect = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    assert losses.label_smoothing_ce(logits, y, 0.5).item() == pytest.approx(expect.item(), rel=1e-6)


def test_mart_hand_computed():
    s_nat, s_adv, y = S, T + torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([1, 0])
    p_adv, p_nat = F.softmax(s_adv, 1), F.softmax(s_nat, 1)
    # top non-true class of p_adv: sample 0 (true 1): class 0; sample 1 (true 0): ties 1, 2 -> argsort's top
    y_wrong = []
    for b in range(2):
        order = [c for c in p_adv[b].argsort().tolist() if c != y[b].item()]
        y_wrong.append(order[-1])
    bce = -torch.log(1.0001 - p_adv[torch.arange(2), y_wrong] + 1e-12).mean()
    kl = (p_nat * (torch.log(p_nat + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
    rob = 6 * (kl * (1.0000001 - p_nat[torch.arange(2), y])).mean()
    got = losses.mart_loss(s_nat=s_nat, s_adv=s_adv, y=y, beta=6.0)
    assert got.item() == pytest.approx((bce + rob).item(), rel=1e-6)


def test_cam_on_known_weights_and_attention_map():
    fmap = torch.zeros(2, 2, 2, 2)
    fmap[:, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    fmap[:, 1] = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # 3 classes x 2 channels
    raw = losses.cam(fmap, w, torch.tensor([0, 2]), norm="none")
    assert torch.equal(raw[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(raw[1], torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    mm = losses.cam(fmap, w, torch.tensor([0, 2]))
    assert torch.allclose(mm[1], torch.tensor([[1.0, 2 / 3], [2 / 3, 0.0]]))
    up = losses.cam(fmap, w, torch.tensor([1, 1]), size=(4, 4), norm="none")  # bilinear, as F.interpolate
    assert up.shape == (2, 4, 4) and up[0, -1, -1].item() == pytest.approx(2.0) and up[0, 0, 0].item() == 0
    # a CAM from a real model equals the classifier applied to each location (global average pooling)
    torch.manual_seed(0)
    m = build_model("smallcnn", 10, 1, 8).eval()
    x = torch.rand(3, 1, 8, 8)
    out = forward_all(m, x)
    c = losses.cam(out.feature_map, classifier_of(m).weight, torch.tensor([1, 4, 7]), norm="none")
    expect = out.logits[torch.arange(3), [1, 4, 7]] - classifier_of(m).bias[[1, 4, 7]]
    assert torch.allclose(c.flatten(1).mean(1), expect, atol=1e-5)
    att = losses.attention_map(fmap)
    assert torch.allclose(att[0], torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    mse = losses.align_loss(raw, torch.zeros(2, 4, 4))  # resized to the teacher's size
    assert mse.item() > 0


def test_smaraad_losses_hand_computed():
    y = torch.tensor([2, 0])
    cs, ct = torch.rand(2, 3, 3), torch.rand(2, 3, 3)
    align = ((cs - ct) ** 2).flatten(1).mean(1)
    sm = -losses.soft_spearman(F.softmax(S, 1), F.softmax(T, 1), 10.0)
    got = losses.smaraad_loss(s_nat=None, s_adv=S, t_nat=None, t_adv=T, cam_s_adv=cs, cam_t_adv=ct, c=2.0, alpha=1.0,
                              gamma=10.0)
    assert got.item() == pytest.approx(2 + (sm + align).mean().item(), rel=1e-6)
    s_nat = S + 0.3
    g = F.softmax(T, 1)[torch.arange(2), y] ** 0.1
    p = F.softmax(T, 1)
    w = (1 - (-(p * p.log()).sum(1)) / math.log(3)).clamp(0, 1)
    rho = losses.soft_spearman(F.softmax(s_nat, 1), F.softmax(S, 1), 10.0)
    own = F.cross_entropy(s_nat, y, reduction="none")
    for term, sign in (("intent", -1), ("printed", 1)):
        got = losses.smaraadpp_loss(s_nat=s_nat, s_adv=S, t_adv=T, y=y, cam_s_adv=cs, cam_t_adv=ct, lam=0.1, gamma=10.0,
                                    entropy_of="teacher", self_term=term)
        expect = (g * w * (sm + align) + (1 - g) * (sign * rho + own)).mean()
        assert got.item() == pytest.approx(expect.item(), rel=1e-6)
    assert w[1].item() == 0.0  # a uniform teacher gets weight 0


def test_stf_head_shapes_slicing_and_mc_dropout():
    torch.manual_seed(0)
    m = STFStudent(build_model("smallcnn", 10, 1, 8), num_teachers=3, num_classes=10, dropout=0.5, samples=4)
    assert m.stf.out_features == 30 and m.head.in_features == 30
    assert isinstance(m.backbone.classifier, torch.nn.Identity)
    x = torch.rand(5, 1, 8, 8)
    m.eval()
    logits, z = m(x, return_stf=True)
    assert z.shape == (5, 3, 10) and torch.allclose(logits, m(x))
    h = m.embed(m.features(x))
    flat = m.stf(h)
    assert torch.equal(z[:, 1], flat[:, 10:20])  # teacher j = the j-th block of C entries
    assert torch.allclose(m.classifier(h), logits, atol=1e-5)  # the composed classifier
    m.train()
    torch.manual_seed(7)
    logits, z = m(x, return_stf=True)
    torch.manual_seed(7)
    h = m.embed(m.features(x))
    draws = torch.stack([m.stf(m.drop(h)) for _ in range(4)])
    assert torch.allclose(z.reshape(5, 30), draws.mean(0), atol=1e-6)
    assert torch.allclose(logits, m.head(draws.mean(0)), atol=1e-6)  # averaged before the softmax
    assert not torch.allclose(draws[0], draws[1])


def test_darht_perturbs_half_the_batches_in_eval_mode(digits):
    torch.manual_seed(0)
    student = STFStudent(build_model("smallcnn", 10, 1, 8), 2, 10)
    spy = ModeSpy(student).train()
    teachers = [build_model("smallcnn", 10, 1, 8).eval(), build_model("vit", 10, 1, 8).eval()]
    m = get_method("darht")({}, InnerMaxConfig(0.1, 0.1 * 0.003 / 0.031, 10), teachers, 10)
    x, y = digits.test.images(torch.arange(8)), digits.test.y[:8]
    adv = [m.perturb(spy, x, y) for _ in range(40)]
    n_adv = sum(a is not None for a in adv)
    assert 10 <= n_adv <= 30  # Binomial(40, 1/2)
    assert set(spy.modes) == {False} and spy.training
    xa = next(a for a in adv if a is not None)
    assert (xa - x).abs().max() <= 0.1 + 1e-6
    loss, logits = m.loss(student, x, xa, y)
    assert loss.requires_grad and logits.shape == (8, 10)
    with pytest.raises(Exception, match="teacher"):
        get_method("darht")({}, InnerMaxConfig(0.1, 0.01, 10), [], 10)


def test_agkd_bml_attacks_aim_at_the_confusing_class(digits):
    torch.manual_seed(0)
    teacher = build_model("smallcnn", 10, 1, 8).eval()
    student = build_model("smallcnn", 10, 1, 8)
    m = get_method("agkd-bml")({}, InnerMaxConfig(0.1, 0.025, 10), [teacher], 10)
    m.prepare(student, digits.train, None, fresh=True)
    assert m.initialised_from_teacher
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    student.train()
    x, y = digits.test.images(torch.arange(16)), digits.test.y[:16]
    with torch.no_grad():
        student.eval()
        y_mc = student(x).scatter(1, y[:, None], -1e4).argmax(1)
    x1a, x2, x2a = m.perturb(student, x, y)
    for a, b in ((x1a, x), (x2a, x2)):
        assert (a - b).abs().max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    # the backward images come from the most confusing class, matched exactly in the training set
    flat = digits.train.images().flatten(1)
    for img, c in zip(x2, y_mc):
        hit = (flat - img.flatten()).abs().sum(1).argmin()
        assert digits.train.y[hit] == c
    with torch.no_grad():
        student.eval()
        ce_before = F.cross_entropy(student(x), y_mc)
        ce_after = F.cross_entropy(student(x1a), y_mc)
    assert ce_after < ce_before  # targeted: x1' moves toward y_mc
    loss, logits = m.loss(student.train(), x, (x1a, x2, x2a), y)
    assert torch.isfinite(loss) and loss.requires_grad


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, digits_teacher):
    root = tmp_path_factory.mktemp("teachers")
    train(TrainConfig(method="natural", dataset="digits", epochs=2), root / "natural", progress=False)
    vit = merge(TrainConfig(method="natural", dataset="digits", model="vit", epochs=2, augment=False),
                {"optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.0})
    train(vit, root / "vit", progress=False)  # the offline ViT teacher recipe (configs/natural/digits-vit.yaml)
    return {"pgd-at": str(digits_teacher), "natural": str(root / "natural"), "vit": str(root / "vit")}


@pytest.mark.parametrize("name,who", [("darht", ["pgd-at", "natural"]), ("darht", ["pgd-at", "vit"]),
                                      ("smaraad", ["pgd-at"]), ("smaraadpp", ["pgd-at"]),
                                      ("agkd-bml", ["natural"])])
def test_one_epoch_on_digits_beats_chance(name, who, teachers, tmp_path):
    cfg = TrainConfig(method=name, dataset="digits", epochs=1, teachers=[teachers[w] for w in who])
    h = train(cfg, tmp_path / name, progress=False)
    assert h[-1]["clean_acc"] > 0.3, h[-1]
    lm = resolve_model(str(tmp_path / name))  # the run directory reloads (DARHT: with its STF head)
    if name == "darht":
        assert isinstance(lm.model, STFStudent) and lm.model.num_teachers == 2


def test_knn_accuracy_hand_example():
    from kdbench.evaluation.distill import knn_accuracy

    ref = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1]])
    ref_y = torch.tensor([0, 0, 1, 1, 1])
    q, y = torch.tensor([[0.05], [5.05], [0.16]]), torch.tensor([0, 1, 1])
    assert knn_accuracy(ref, ref_y, q, y, k=1) == 1.0
    assert knn_accuracy(ref, ref_y, q, y, k=3) == pytest.approx(2 / 3)  # 0.16: 0.2, 0.1, 0.0 -> class 0
    assert knn_accuracy(ref, ref_y, q, y, k=5) == pytest.approx(2 / 3)  # all five: class 1 for every query


def test_distillation_metrics_of_a_model_against_itself(digits_teacher, digits):
    """Student = teacher: agreement 1, every adversarial example transfers, CAMs coincide and the
    transfer attack equals the white-box attack (same seed, same examples)."""
    from kdbench.evaluation.distill import distillation_metrics

    m = resolve_model(str(digits_teacher)).model
    x, y = digits.test.images(torch.arange(120)), digits.test.y[:120]
    d = distillation_metrics(m, [m], x, y, eps=0.1, train_x=digits.train.images(torch.arange(600)),
                             train_y=digits.train.y[:600], teacher_names=["self"])
    t = d["teachers"]["self"]
    assert t["agreement"] == {"clean": 1.0, "adversarial": 1.0}
    assert t["transferability"]["rate"] == 1.0 and t["transferability"]["points"] > 0
    assert t["transfer_attack"]["robust_accuracy"] == pytest.approx(d["student_pgd_accuracy"])
    assert t["cam_similarity"]["cosine"] == pytest.approx(1.0, abs=1e-5) and t["cam_similarity"]["mse"] < 1e-10
    assert 0.5 < d["knn"]["clean"] <= 1 and d["knn"]["pgd"] < d["knn"]["clean"]


@pytest.mark.subprocess
def test_evaluate_cli_reports_distillation_metrics(teachers, tmp_path):
    import json

    from conftest import run_cli

    run = tmp_path / "rslad"
    train(TrainConfig(method="rslad", dataset="digits", epochs=1, teachers=[teachers["pgd-at"]]), run,
          progress=False)
    out = tmp_path / "r.json"
    r = run_cli("evaluate", "--model", run, "--n", 60, "--attacks", "fgsm", "--db", "", "--no-checks", "--out", out,
                "--tsne", tmp_path / "t.png", "--no-progress")
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())["distillation"]
    t = d["teachers"][teachers["pgd-at"]]
    assert set(t) >= {"agreement", "transferability", "transfer_attack", "cam_similarity"}
    assert 0 <= t["agreement"]["clean"] <= 1 and d["knn"]["k"] == 50
    assert (tmp_path / "t.png").stat().st_size > 10_000
    r = run_cli("evaluate", "--model", "smallcnn", "--random-weights", "--dataset", "digits", "--tsne",
                tmp_path / "u.png")
    assert r.returncode == 2 and "--tsne needs a teacher" in r.stderr


def test_distillation_metrics_of_a_darht_student_reach_its_composed_classifier(digits):
    """A DARHT student ends in the STF head (teachers x classes -> classes); its CAMs use the
    composed classifier on the pooled feature map, also through evaluate()'s guard (which
    unwraps like DDP's ``module``)."""
    import math

    from kdbench.evaluation import evaluate
    from kdbench.methods import get_method
    from kdbench.models import build_model

    torch.manual_seed(0)
    student = get_method("darht").build_student(build_model("smallcnn", 10, 1, 8), {}, 2, 10)
    teacher = build_model("smallcnn", 10, 1, 8)
    r = evaluate(student, dataset=digits, n=16, attacks=["fgsm"], checks=False, sensitivity=False, device="cpu",
                 teachers=[teacher], teacher_names=["t"], knn_reference=None, progress=False)
    cam = r.distillation.teachers["t"].cam_similarity
    assert math.isfinite(cam.cosine) and -1 <= cam.cosine <= 1 and cam.mse >= 0
