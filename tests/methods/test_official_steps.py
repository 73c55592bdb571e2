"""One step against the official code (issue 25): each reference below is written from the
official file named in its docstring (commit listed), adapted to CPU and to images in [0, 1]
(the official CIFAR code normalises to [-1, 1] with mean = std = 0.5, so its eps 8/255*2 and
clamp(-1, 1) are kdbench's eps 8/255 and clamp(0, 1)).  Same weights, same batch, same RNG."""
import pytest
import torch
import torch.nn.functional as F

from kdbench.methods import InnerMaxConfig, get_method
from kdbench.models import build_model

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
