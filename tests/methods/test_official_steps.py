"""One step against the official code (issue 25): each reference below is written from the
official file named in its comment (commit listed), adapted to CPU (``.cuda()`` dropped) and to
images in [0, 1] (AGKD-BML's CIFAR code normalises to [-1, 1] with mean = std = 0.5, so its eps
8/255*2 and clamp(-1, 1) are kdbench's eps 8/255 and clamp(0, 1)).  Same weights, same batch,
same RNG; kdbench's side is ``engine.train_step``, the step the training loop runs.  A step is
the same when the weights, the gradients and every buffer (BatchNorm running statistics, the
teachers' too) agree after it.

Files read (repository, commit, file):
  goldblum/AdversariallyRobustDistillation 779ade36d612bddb0a5a705fdd74efe7571a1381 main.py
  ZFancy/IAD a8091a8c7552cef43d8f3f28085426cb786ce9d3 IAD-I.py, IAD-II.py
  zibojia/RSLAD c40e04f6c4edcd87431d0250b168d503b1293745 rslad_loss.py, resnet18_rslad_cifar10.py
  zhaoshiji123/MTARD 6480a1b40d6195e437a876639ea37b7b40c46a58 mtard/mtard_loss.py, mtard/mtard_resnet18_cifar10.py
  boyellow/AdaAD 9e5c6e5ff73052af196065439517562d37eff6e6 AT_helper.py, main.py
  yaodongyu/TRADES 6e8e11b7c281371c2f027ffadfbaea80361f09de trades.py
  bayesomicslab/DARHT 5c0a1ff607c215095024c8eb45076ff8cc25faf2 DARHT_CIFAR_100_stateful_MWU.py, earlystop.py
  imirzadeh/Teacher-Assistant-Knowledge-Distillation 0f8168f4e7223134361cdd411eba0ab3b1123e29 train.py
  hongw579/AGKD-BML 7b8bbe0ab7ad874f764a22590bf0193355fffbd3 main.py, utils.py (the files' last commit;
    HEAD f51fca4 changes only the README)"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model
from kdbench.training.engine import train_step

EPS, STEP, STEPS = 0.1, 0.025, 10
# the official scripts' nn.KLDivLoss() (element-wise mean) warns on every call
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
KL_NONE = nn.KLDivLoss(reduction="none")


def frozen(seed):
    torch.manual_seed(seed)
    t = build_model("smallcnn", 10, 1, 8).eval()
    return t.requires_grad_(False)


def sgd(model, wd=2e-4):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)


def kdbench_steps(name, params, student, teachers, batches, epoch=0, epochs=10, wd=2e-4):
    """``len(batches)`` steps of kdbench's method through the training loop's own step."""
    m = get_method(name)(params, InnerMaxConfig(EPS, STEP, STEPS), teachers, 10)
    m.begin_epoch(epoch, epochs)
    opt = sgd(student, wd)
    student.train()
    for x, y in batches:
        train_step(m, student, student, x, y, opt)
    return m


def assert_same_step(a, b, *others):
    """Weights and gradients agree to float rounding (the loss is summed in another order), every
    buffer (BN running mean, var, batch count) exactly; ``others`` pairs of teachers likewise."""
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=f"weight {name}")
    for m1, m2 in ((a, b),) + others:
        for (name, u), (_, v) in zip(m1.named_buffers(), m2.named_buffers()):
            assert torch.equal(u, v), f"buffer {name} differs"


def buffers_differ(a, b):
    return any(not torch.equal(u, v) for (_, u), (_, v) in zip(a.named_buffers(), b.named_buffers()))


def official_sign_steps(x_adv, x_natural, loss_of, step_size, epsilon, perturb_steps):
    """The loop of TRADES' trades.py, which RSLAD's rslad_loss.py, MTARD's mtard_loss.py, AdaAD's
    AT_helper.py and DARHT's earlystop.py repeat line for line, each with its own loss
    ``loss_of(x_adv)`` (computed under enable_grad): sign ascent, projection, clamp."""
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = loss_of(x_adv)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


@pytest.fixture
def batch(digits):
    idx = torch.arange(32)
    return digits.train.images(idx), digits.train.y[idx]


def pair(seed=0):
    torch.manual_seed(seed)
    s = build_model("smallcnn", 10, 1, 8).train()
    return s, copy.deepcopy(s)


# ---- ARD (main.py) and IAD (IAD-I.py, IAD-II.py share ARD's AttackPGD) --------------------

def official_attack_pgd(net, inputs, targets, eps=EPS, step=STEP, steps=STEPS):
    """AttackPGD.forward (ARD main.py, IAD-I.py, IAD-II.py): uniform start not clamped, summed CE
    in the mode the caller left (train), returns (net(x'), x')."""
    x = inputs.detach()
    x = x + torch.zeros_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        x.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(net(x), targets, reduction="sum")
        grad = torch.autograd.grad(loss, [x])[0]
        x = x.detach() + step * torch.sign(grad.detach())
        x = torch.min(torch.max(x, inputs - eps), inputs + eps)
        x = torch.clamp(x, 0.0, 1.0)
    return net(x), x


def official_ard_step(net, teacher, inputs, targets, opt, alpha=1.0, temp=30.0):
    """ARD main.py train()."""
    net.train()
    opt.zero_grad()
    outputs, pert_inputs = official_attack_pgd(net, inputs, targets)
    teacher_outputs = teacher(inputs)
    basic_outputs = net(inputs)
    loss = alpha * temp * temp * nn.KLDivLoss()(F.log_softmax(outputs / temp, dim=1),
                                               F.softmax(teacher_outputs / temp, dim=1)) \
        + (1.0 - alpha) * nn.CrossEntropyLoss()(basic_outputs, targets)
    loss.backward()
    opt.step()


def trust(guide, targets, beta):
    """The per-point loop both IAD scripts and AdaAD's main.py share: Alpha[pp] = softmax(guide)[pp][y]**beta."""
    Alpha = torch.ones(len(targets))
    for pp in range(len(targets)):
        Alpha[pp] = F.softmax(guide, dim=1)[pp][targets[pp].item()].pow(beta).item()
    return Alpha


def official_iad1_step(basic_net, teacher_net, inputs, targets, opt, started, alpha=1.0, temp=1.0, beta=0.1):
    """IAD-I.py train(): ``started`` is ``epoch >= args.begin``."""
    basic_net.train()
    opt.zero_grad()
    teacher_outputs = teacher_net(inputs)
    outputs, pert_inputs = official_attack_pgd(basic_net, inputs, targets)
    basicop = basic_net(pert_inputs).detach()  # noqa: F841 (unused in the script too)
    guide = teacher_net(pert_inputs)
    official_iad1_loss(basic_net, inputs, targets, outputs, teacher_outputs, guide, started, alpha, temp,
                       beta).backward()
    opt.step()


def official_iad1_loss(net, inputs, targets, outputs, teacher_outputs, guide, started, alpha, temp, beta):
    """IAD-I.py's loss expression, which AdaAD's main.py (AdaAD_with_IAD1) repeats verbatim with
    its own names; S(x) is called inside it, once per term (left to right)."""
    n = len(outputs)
    kd = alpha * temp * temp * (1 / n) * torch.sum(KL_NONE(F.log_softmax(outputs / temp, dim=1),
                                                           F.softmax(teacher_outputs / temp, dim=1)).sum(dim=1))
    if started:
        Alpha = trust(guide, targets, beta)
        return kd + alpha * (1 / n) * torch.sum(KL_NONE(F.log_softmax(outputs, dim=1), F.softmax(
            net(inputs), dim=1)).sum(dim=1).mul(1 - Alpha)) + (1.0 - alpha) * nn.CrossEntropyLoss()(
            net(inputs), targets)
    return kd + (1.0 - alpha) * nn.CrossEntropyLoss()(net(inputs), targets)


def official_iad2_step(basic_net, teacher_net, teacher_st_net, inputs, targets, opt, started,
                       alpha1=0.5, alpha2=0.25, temp=1.0, beta=0.1):
    """IAD-II.py train()."""
    basic_net.train()
    opt.zero_grad()
    outputs, pert_inputs = official_attack_pgd(basic_net, inputs, targets)
    teacher_outputs = teacher_net(pert_inputs)
    st_outputs = teacher_st_net(pert_inputs)
    guide = teacher_net(pert_inputs)
    n = len(outputs)

    def kl_sum(t, w=None):
        per = KL_NONE(F.log_softmax(outputs / temp, dim=1), F.softmax(t / temp, dim=1)).sum(dim=1)
        return (1 / n) * torch.sum(per if w is None else per.mul(w))

    ce = (1 - alpha1 - alpha2) * nn.CrossEntropyLoss()(outputs, targets)
    if started:
        Alpha = trust(guide, targets, beta)
        loss = ce + alpha1 * temp * temp * (kl_sum(teacher_outputs, Alpha) + (1 / n) * torch.sum(KL_NONE(
            F.log_softmax(outputs, dim=1), F.softmax(basic_net(inputs), dim=1)).sum(dim=1).mul(1 - Alpha))) \
            + alpha2 * temp * temp * kl_sum(st_outputs)
    else:
        loss = ce + alpha1 * temp * temp * kl_sum(teacher_outputs) + alpha2 * temp * temp * kl_sum(st_outputs)
    loss.backward()
    opt.step()


# ---- RSLAD and MTARD ------------------------------------------------------------------------

def official_kl_loss(a, b):
    """RSLAD / MTARD scripts' kl_loss."""
    return -a * b + torch.log(b + 1e-5) * b


def official_rslad_inner(model, teacher_logits, x_natural, optimizer, step_size=STEP, epsilon=EPS,
                         perturb_steps=STEPS):
    """rslad_loss.py rslad_inner_loss (returns the train-mode logits on x')."""
    criterion_kl = nn.KLDivLoss(reduction="none")
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    x_adv = official_sign_steps(x_adv, x_natural, lambda xa: torch.sum(criterion_kl(
        F.log_softmax(model(xa), dim=1), F.softmax(teacher_logits, dim=1))), step_size, epsilon, perturb_steps)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    optimizer.zero_grad()
    return model(x_adv)


def official_rslad_step(student, teacher, data, labels, optimizer):
    """resnet18_rslad_cifar10.py's training loop body."""
    student.train()
    optimizer.zero_grad()
    with torch.no_grad():
        teacher_logits = teacher(data)
    adv_logits = official_rslad_inner(student, teacher_logits, data, optimizer)
    student.train()
    nat_logits = student(data)
    kl_Loss1 = torch.mean(official_kl_loss(F.log_softmax(adv_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1)))
    kl_Loss2 = torch.mean(official_kl_loss(F.log_softmax(nat_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1)))
    loss = 5 / 6.0 * kl_Loss1 + 1 / 6.0 * kl_Loss2
    loss.backward()
    optimizer.step()


class OfficialMTARD:
    """mtard_resnet18_cifar10.py's loop body with its module-level state (weight, init losses),
    and mtard_loss.py's mtard_inner_loss_ce."""

    def __init__(self, weight_learn_rate=0.025, bert=1.0):
        self.weight = {"adv_loss": 1 / 2.0, "nat_loss": 1 / 2.0}
        self.init_loss_nat = self.init_loss_adv = None
        self.weight_learn_rate, self.bert = weight_learn_rate, bert

    @staticmethod
    def inner(model, teacher_adv_model, x_natural, y, optimizer, step_size=STEP, epsilon=EPS, perturb_steps=STEPS):
        criterion_ce_loss = torch.nn.CrossEntropyLoss()
        model.eval()
        x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
        x_adv = official_sign_steps(x_adv, x_natural, lambda xa: criterion_ce_loss(model(xa), y),
                                    step_size, epsilon, perturb_steps)
        model.train()
        x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
        optimizer.zero_grad()
        student_logits = model(x_adv)
        with torch.no_grad():
            teacher_logits = teacher_adv_model(x_adv)
        return student_logits, teacher_logits

    def step(self, student, teacher, teacher_nat, data, labels, optimizer):
        student.train()
        optimizer.zero_grad()
        with torch.no_grad():
            teacher_nat_logits = teacher_nat(data)
        student_adv_logits, teacher_adv_logits = self.inner(student, teacher, data, labels, optimizer)
        student.train()
        student_nat_logits = student(data)
        kl_Loss1 = torch.mean(official_kl_loss(F.log_softmax(student_adv_logits, dim=1),
                                               F.softmax(teacher_adv_logits.detach(), dim=1)))
        kl_Loss2 = torch.mean(official_kl_loss(F.log_softmax(student_nat_logits, dim=1),
                                               F.softmax(teacher_nat_logits.detach(), dim=1)))
        if self.init_loss_nat is None:
            self.init_loss_nat = kl_Loss2.item()
        if self.init_loss_adv is None:
            self.init_loss_adv = kl_Loss1.item()
        inv_rate_adv = (kl_Loss1.item() / self.init_loss_adv) ** self.bert
        inv_rate_nat = (kl_Loss2.item() / self.init_loss_nat) ** self.bert
        w = self.weight
        w["nat_loss"] = w["nat_loss"] - self.weight_learn_rate * (
            w["nat_loss"] - inv_rate_nat / (inv_rate_adv + inv_rate_nat))
        w["adv_loss"] = 1 - w["nat_loss"]
        total_loss = w["adv_loss"] * kl_Loss1 + w["nat_loss"] * kl_Loss2
        total_loss.backward()
        optimizer.step()


def test_mtard_two_steps_equal_the_official_code(digits):
    """Two batches, so the adaptive weight moves (the first update leaves w_nat = 0.5)."""
    batches = [(digits.train.images(torch.arange(i, i + 32)), digits.train.y[i:i + 32]) for i in (0, 32)]
    a, b = pair()
    t_adv, t_nat = frozen(1), frozen(3)
    torch.manual_seed(2)
    m = kdbench_steps("mtard", {}, a, [t_adv, t_nat], batches)
    torch.manual_seed(2)
    ref, opt = OfficialMTARD(), sgd(b)
    for x, y in batches:
        ref.step(b, t_adv, t_nat, x, y, opt)
    assert m.w_nat == pytest.approx(ref.weight["nat_loss"], rel=1e-6) and m.w_nat != 0.5
    assert_same_step(a, b)


# ---- AdaAD and AdaIAD (AT_helper.py, main.py) ------------------------------------------------

def official_adaad_inner(model, teacher_model, x_natural, step_size=STEP, steps=STEPS, epsilon=EPS):
    """AT_helper.py adaad_inner_loss (BN_eval=True, random_init=True)."""
    criterion_kl = nn.KLDivLoss(reduction="none")
    model.eval()
    teacher_model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    x_adv = official_sign_steps(x_adv, x_natural, lambda xa: torch.sum(criterion_kl(
        F.log_softmax(model(xa), dim=1), F.softmax(teacher_model(xa), dim=1))), step_size, epsilon, steps)
    model.train()
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def official_adaad_step(net, teacher_net, inputs, targets, optimizer, AdaAD_alpha=1.0):
    """main.py, ``args.method == 'AdaAD'``, CIFAR-10 branch, then the shared backward/step."""
    adv_inputs = official_adaad_inner(net, teacher_net, inputs)
    net.train()
    optimizer.zero_grad()
    ori_outputs = net(inputs)
    adv_outputs = net(adv_inputs)
    with torch.no_grad():
        teacher_net.eval()
        t_ori_outputs = teacher_net(inputs)
        t_adv_outputs = teacher_net(adv_inputs)
    kl_loss1 = nn.KLDivLoss()(F.log_softmax(adv_outputs, dim=1), F.softmax(t_adv_outputs.detach(), dim=1))
    kl_loss2 = nn.KLDivLoss()(F.log_softmax(ori_outputs, dim=1), F.softmax(t_ori_outputs.detach(), dim=1))
    loss = AdaAD_alpha * kl_loss1 + (1 - AdaAD_alpha) * kl_loss2
    loss.backward()
    optimizer.step()


def official_adaiad_step(net, teacher_net, inputs, targets, optimizer, started, IAD_alpha=1.0, temp=30.0,
                         IAD_beta=0.1):
    """main.py, ``args.method == 'AdaAD_with_IAD1'`` (``started``: ``epoch >= args.IAD_begin``)."""
    optimizer.zero_grad()
    adv_inputs = official_adaad_inner(net, teacher_net, inputs)
    net.train()
    ori_outputs = net(inputs)  # noqa: F841 (unused in the script too)
    adv_outputs = net(adv_inputs)
    guide = teacher_net(adv_inputs)
    teacher_outputs = teacher_net(adv_inputs)
    official_iad1_loss(net, inputs, targets, adv_outputs, teacher_outputs, guide, started, IAD_alpha, temp,
                       IAD_beta).backward()
    optimizer.step()


# ---- TRADES (trades.py) ----------------------------------------------------------------------

def official_trades_step(model, x_natural, y, optimizer, step_size=STEP, epsilon=EPS, perturb_steps=STEPS,
                         beta=6.0):
    """trades.py trades_loss (distance='l_inf'), then train_trades_cifar10.py's backward/step."""
    model.train()
    optimizer.zero_grad()
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    x_adv = official_sign_steps(x_adv, x_natural, lambda xa: criterion_kl(
        F.log_softmax(model(xa), dim=1), F.softmax(model(x_natural), dim=1)), step_size, epsilon, perturb_steps)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    loss = loss_natural + beta * loss_robust
    loss.backward()
    optimizer.step()


# ---- DARHT (DARHT_CIFAR_100_stateful_MWU.py, earlystop.py) with its release switches -----------

DARHT_RELEASE = {"dropout": 0.0, "samples": 1, "normalise_weights": False, "kl_direction": "teacher",
                 "phases": [50, 118], "skip_ce": 8, "teacher_train_mode": True}


class ReleasedResNetStd(nn.Module):
    """models/resnet_std.py's forward signature over kdbench's STF student: (logits, linear1's
    output), the J x C map flattened as linear1 returns it."""

    def __init__(self, stf_student):
        super().__init__()
        self.net = stf_student

    def forward(self, x):
        logits, stf = self.net(x, return_stf=True)
        return logits, stf.flatten(1)


def official_darht_step(model, teachers, data, target, optimizer, epoch, data_flag, step_size=STEP,
                        epsilon=EPS, perturb_steps=STEPS):
    """train() for one batch: ``data_flag`` is the script's random.choice([0, 1]); ``model(x)``
    returns (logits, STF map) as models/resnet_std.py; cal_kd_loss with kd_loss == 'kl'; the
    teachers are never put in eval (train mode).  Returns False where the script ``continue``s."""
    model.train()
    if data_flag == 1:  # earlystop.py mtard_inner_loss_ce
        model.eval()
        x_adv = data.detach() + 0.001 * torch.randn(data.shape).detach()

        def loss_of(x_adv):
            model_output = model(x_adv)
            if len(model_output) == 2:
                model_output = model_output[0]
            return torch.nn.CrossEntropyLoss()(model_output, target)

        x_adv = official_sign_steps(x_adv, data, loss_of, step_size, epsilon, perturb_steps)
        model.train()
        train_data = torch.clamp(x_adv, 0.0, 1.0).detach()
    else:
        train_data = data
    optimizer.zero_grad()
    std_output, std_knowledge = model(train_data)
    cls_loss = nn.CrossEntropyLoss(reduction="mean")(std_output, target)
    if cls_loss.item() > 8:
        return False

    def cal_kd_loss():
        std_kd_loss = torch.zeros(len(teachers))
        tch_loss = [0] * len(teachers)
        kd_loss = torch.tensor(0.0)
        for i in range(len(teachers)):
            with torch.no_grad():
                tch_output = teachers[i](train_data)
            std_kd_loss[i] = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(
                std_knowledge.view(-1, len(teachers), tch_output.shape[1])[:, i, :], dim=1),
                F.softmax(tch_output, dim=1))
            tch_loss[i] += nn.CrossEntropyLoss(reduction="mean")(tch_output, target)
        current_m_weights = torch.exp(-1 * torch.tensor([h.item() for h in tch_loss]))
        for i in range(len(teachers)):
            kd_loss += current_m_weights[i] * std_kd_loss[i]
        return kd_loss

    if epoch < 50:
        loss = cls_loss
    elif epoch < 118:
        loss = cls_loss + cal_kd_loss()
    else:
        loss = cal_kd_loss()
    loss.backward()
    optimizer.step()
    return True


@pytest.mark.parametrize("epoch,adversarial", [(10, True), (60, True), (60, False), (130, True)])
def test_darht_release_step_equals_the_official_code(batch, epoch, adversarial):
    """With the tabled release switches, each phase, a clean and an adversarial batch.  The teachers
    (with BatchNorm, in train mode as released) must end with the same running statistics too."""
    cls = get_method("darht")
    torch.manual_seed(0)
    a = cls.build_student(build_model("smallcnn", 10, 1, 8), {**cls.params, **DARHT_RELEASE}, 2, 10).train()
    b = copy.deepcopy(a)
    ta = [frozen(1), frozen(3)]
    tb = [t.train() for t in copy.deepcopy(ta)]  # the script never calls .eval() on them
    torch.manual_seed(2)
    kdbench_steps("darht", {**DARHT_RELEASE, "adv_prob": 1.0 if adversarial else 0.0}, a, ta, [batch],
                  epoch=epoch, epochs=350, wd=5e-4)
    torch.manual_seed(2)
    torch.rand(())  # kdbench's coin for the batch, drawn where the script calls random.choice
    official_darht_step(ReleasedResNetStd(b), tb, *batch, sgd(b, 5e-4), epoch, int(adversarial))
    assert_same_step(a, b, *zip(ta, tb))

# hongw579/AGKD-BML, main.py at commit 7b8bbe0ab7ad874f764a22590bf0193355fffbd3: Attacks.targeted_MC,
# Attacks.perturb_PGD(targeted=True); train() calls targeted_MC, then perturb_PGD on the backward images.


def official_targeted(net, inputs, target, eps, step, steps):
    """main.py's loop (targeted_MC and perturb_PGD(targeted=True) share it): the uniform start
    *not* clamped, each step sign-descended on CE, projected onto the eps-box, clamped."""
    x = inputs.detach() + torch.zeros_like(inputs).uniform_(-eps, eps)
    for _ in range(steps):
        x.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(net(x), target, reduction="sum")
        grad = torch.autograd.grad(loss, [x])[0]
        x = x.detach() - step * torch.sign(grad.detach())
        x = torch.min(torch.max(x, inputs - eps), inputs + eps).clamp(0, 1)
    return x


def official_agkd_inner(net, inputs, targets, input2, eps, step, steps):
    """train()'s inner maximisation: MC labels from the eval-mode logits, the forward AE towards
    them, then the backward AE of input2 towards the true labels."""
    net.eval()
    mc = net(inputs.detach()).detach().clone()
    mc[torch.arange(len(targets)), targets] = -1e4
    mc_targets = mc.argmax(1)
    x1 = official_targeted(net, inputs, mc_targets, eps, step, steps)
    x2 = official_targeted(net, input2, targets, eps, step, steps)
    net.train()
    return x1, mc_targets, x2


@pytest.mark.parametrize("steps", [1, 10])
def test_agkd_bml_inner_maximisation_equals_the_official_code(digits, steps):
    torch.manual_seed(0)
    teacher = build_model("smallcnn", 10, 1, 8).eval()
    student = build_model("smallcnn", 10, 1, 8)
    eps, step = 0.1, 0.025
    m = get_method("agkd-bml")({}, InnerMaxConfig(eps, step, steps), [teacher], 10)
    m.prepare(student, digits.train, None, fresh=True)
    # pixels at 0 and 1, where an unclamped start differs from a clamped one
    x, y = digits.test.images(torch.arange(16)), digits.test.y[:16]
    assert (x == 0).any()
    x2_fixed = digits.train.images(torch.arange(16, 32))
    m.backward_images = lambda cls, device: x2_fixed  # the same backward images for both (no RNG draw)
    ref_student = build_model("smallcnn", 10, 1, 8)
    ref_student.load_state_dict(student.state_dict())
    torch.manual_seed(1)
    x1a, x2, x2a = m.perturb(student.train(), x, y)
    torch.manual_seed(1)
    o1, mc, o2 = official_agkd_inner(ref_student, x, y, x2_fixed, eps, step, steps)
    assert torch.equal(x1a, o1) and torch.equal(x2a, o2) and torch.equal(x2, x2_fixed)
    # the release differs from a clamped start: the switch gives the clamped (earlier kdbench) attack
    if steps == 1:
        c = get_method("agkd-bml")({"clip_start": True}, InnerMaxConfig(eps, step, steps), [teacher], 10)
        c.prepare(build_model("smallcnn", 10, 1, 8), digits.train, None, fresh=True)
        c.backward_images = m.backward_images
        torch.manual_seed(1)
        c1, _, _ = c.perturb(student.train(), x, y)
        assert not torch.equal(c1, o1)


def test_darht_release_switch_builds_a_student_without_dropout():
    """docs/methods.md, DARHT (release): dropout 0 with one sample is a deterministic student,
    the paper's default (MC dropout 0.1, 4 samples) is not."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    cls = get_method("darht")
    for params, deterministic in (({"dropout": 0.0, "samples": 1}, True), ({}, False)):
        p = {**cls.params, **params}
        s = cls.build_student(build_model("smallcnn", 10, 1, 8), p, 2, 10).train()
        out = [s(x) for _ in range(2)]
        assert torch.equal(out[0], out[1]) == deterministic


# ---- TAKD (train.py, TrainManager.train with a teacher) ------------------------------------------

def official_takd_step(student, teacher, data, target, optimizer, lambda_=0.5, T=20.0):
    student.train()
    teacher.eval()
    optimizer.zero_grad()
    output = student(data)
    loss_SL = nn.CrossEntropyLoss()(output, target)
    teacher_outputs = teacher(data)
    loss_KD = nn.KLDivLoss()(F.log_softmax(output / T, dim=1), F.softmax(teacher_outputs / T, dim=1))
    loss = (1 - lambda_) * loss_SL + lambda_ * T * T * loss_KD
    loss.backward()
    optimizer.step()


# ---- AGKD-BML: the whole step (main.py train(), utils.py's losses) --------------------------------

def official_labelsmooth_ce(pred, targets, lb_smooth):
    """utils.py softmax_crossentropy_labelsmooth."""
    n_class = pred.size(1)
    one_hot = torch.zeros_like(pred).scatter(1, targets.unsqueeze(1), 1)
    one_hot = one_hot * (1 - lb_smooth) + (1 - one_hot) * lb_smooth / (n_class - 1)
    return (-(one_hot * F.log_softmax(pred, dim=1)).sum(dim=1)).mean()


def official_angular_distance(logits1, logits2):
    numerator = logits1.mul(logits2).sum(1)
    denominator = logits1.mul(logits1).sum(1).sqrt().mul(logits2.mul(logits2).sum(1).sqrt())
    for i, _ in enumerate(numerator):
        if numerator[i] > denominator[i]:
            numerator[i] = denominator[i]
    return torch.sub(1.0, torch.abs(torch.div(numerator, denominator)))


def official_triplet_loss(a, p, n, margin, lam2):
    L_trip = margin + official_angular_distance(a, p) - official_angular_distance(a, n)
    L_trip = torch.max(torch.tensor(0.0), L_trip).mean()
    norm = a.mul(a).mean() + p.mul(p).mean() + n.mul(n).mean()  # L2_norm of each
    return L_trip + lam2 * norm


def official_attention_map(feature):
    attention = torch.sum(feature, 1)
    attention_size = attention.shape
    attention_norm = attention.view(attention.size(0), -1)
    attention_norm -= attention_norm.min(1, keepdim=True)[0]
    attention_norm /= attention_norm.max(1, keepdim=True)[0]
    return attention_norm.view(attention_size)


def official_mart_loss(logits, logits_adv, y, kl, beta=6.0):
    batch_size = len(logits)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_bce = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_bce + float(beta) * loss_robust


class ReleasedWideResNet(nn.Module):
    """custom_models/model.py's forward signature over a kdbench model: (feature map, pooled
    embedding, logits), train mode unless ``_eval``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, _eval=False):
        self.net.train(not _eval)
        out = self.net(x, features=True)
        return out.feature_map, out.embedding, out.logits


def official_agkd_step(basic_net, nat_net, input1, target1, input2, optimizer, margin=0.03, lam1=2, lam2=0.001,
                       lb_smooth=0.5):
    """main.py train() for one batch; ``input2`` stands for the class-matched images the script
    draws with classes_idx.get_batch (the same images on both sides)."""
    kl = nn.KLDivLoss(reduction="none")
    adv_input1, _, adv_input2 = official_agkd_inner(basic_net.net, input1, target1, input2, EPS, STEP, STEPS)
    basic_net.train()
    input_all = torch.cat([adv_input1, input1, adv_input2], 0)
    input_nat = torch.cat([input1, input2], 0)
    features, x4s, outputs = basic_net(input_all)
    features_nat, x4s_nat, outputs_nat = nat_net(input_nat, _eval=True)
    output_all = torch.chunk(outputs, 3, dim=0)
    x4_all = torch.chunk(x4s, 3, dim=0)
    feature_all = torch.chunk(features, 3, dim=0)
    feature_nat_all = torch.chunk(features_nat, 2, dim=0)
    loss = official_labelsmooth_ce(output_all[0], target1, lb_smooth=lb_smooth)
    triplet_loss_apn = official_triplet_loss(x4_all[0], x4_all[1], x4_all[2], margin, lam2)
    loss = loss + official_mart_loss(output_all[1], output_all[0], target1, kl)
    loss = loss + F.l1_loss(official_attention_map(feature_all[0]),
                            official_attention_map(feature_nat_all[0].detach().clone()))
    loss = loss + F.l1_loss(official_attention_map(feature_all[2]),
                            official_attention_map(feature_nat_all[1].detach().clone()))
    loss = loss + lam1 * triplet_loss_apn
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_agkd_bml_step_equals_the_official_code(digits, batch):
    a, b = pair()
    teacher = frozen(1)
    x2_fixed = digits.train.images(torch.arange(32, 64))
    m = get_method("agkd-bml")({"init_from_teacher": False}, InnerMaxConfig(EPS, STEP, STEPS), [teacher], 10)
    m.prepare(a, digits.train, None, fresh=True)
    m.backward_images = lambda cls, device: x2_fixed
    opt = sgd(a, 5e-4)
    torch.manual_seed(2)
    train_step(m, a, a, *batch, opt)
    torch.manual_seed(2)
    official_agkd_step(ReleasedWideResNet(b), ReleasedWideResNet(teacher), *batch, x2_fixed, sgd(b, 5e-4))
    assert_same_step(a, b)


# ---- the one-step comparisons -----------------------------------------------------------------

# (method, params, teacher seeds, the official step, epoch, weight decay, whether the compact
# passes (official_passes: false) leave other BN statistics: None where the method has no switch)
STEPS_CASES = {
    "ard": ("ard", {}, [1], lambda s, t, x, y, o: official_ard_step(s, t[0], x, y, o), 0, 2e-4, None),
    "iad-i-before-begin": ("iad", {"begin": 1}, [1],
                           lambda s, t, x, y, o: official_iad1_step(s, t[0], x, y, o, started=False), 0, 2e-4, True),
    "iad-i-from-begin": ("iad", {"begin": 1}, [1],
                         lambda s, t, x, y, o: official_iad1_step(s, t[0], x, y, o, started=True), 1, 2e-4, True),
    # IAD-II differs only by the S(x) it skips before ``begin``: from it the two orders agree
    "iad-ii-before-begin": ("iad-ii", {"begin": 1}, [1, 3],
                            lambda s, t, x, y, o: official_iad2_step(s, *t, x, y, o, started=False), 0, 2e-4, True),
    "iad-ii-from-begin": ("iad-ii", {"begin": 1}, [1, 3],
                          lambda s, t, x, y, o: official_iad2_step(s, *t, x, y, o, started=True), 1, 2e-4, False),
    "rslad": ("rslad", {}, [1], lambda s, t, x, y, o: official_rslad_step(s, t[0], x, y, o), 0, 2e-4, None),
    "adaad": ("adaad", {}, [1], lambda s, t, x, y, o: official_adaad_step(s, t[0], x, y, o), 0, 5e-4, True),
    "adaiad-before-begin": ("adaiad", {"begin": 1}, [1],
                            lambda s, t, x, y, o: official_adaiad_step(s, t[0], x, y, o, started=False), 0, 5e-4, True),
    "adaiad-from-begin": ("adaiad", {"begin": 1}, [1],
                          lambda s, t, x, y, o: official_adaiad_step(s, t[0], x, y, o, started=True), 1, 5e-4, True),
    "trades": ("trades", {}, [], lambda s, t, x, y, o: official_trades_step(s, x, y, o), 0, 2e-4, True),
    "takd-kd": ("takd", {"loss": "kd", "lam": 0.5, "T": 20.0}, [1],
                lambda s, t, x, y, o: official_takd_step(s, t[0], x, y, o), 0, 2e-4, None),
}


@pytest.mark.parametrize("case", list(STEPS_CASES))
def test_one_step_equals_the_official_code(batch, case):
    """kdbench's step (the default params) equals the official step: weights, gradients, buffers.
    The compact passes keep the gradient and, where their order differs, change the statistics --
    so the switch is what makes the buffers agree."""
    name, params, seeds, official, epoch, wd, compact_differs = STEPS_CASES[case]
    teachers = [frozen(k) for k in seeds]
    runs = {}
    for passes in ((True, False) if compact_differs is not None else (None,)):
        a, b = pair()
        torch.manual_seed(2)
        kdbench_steps(name, params if passes is None else {**params, "official_passes": passes}, a, teachers,
                      [batch], epoch=epoch, wd=wd)
        runs[passes] = a
    torch.manual_seed(2)
    official(b, teachers, *batch, sgd(b, wd))
    assert_same_step(runs[True if compact_differs is not None else None], b)
    if compact_differs is not None:
        for (_, p), (_, q) in zip(runs[False].named_parameters(), b.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
        assert buffers_differ(runs[False], b) == compact_differs
