"""RSLAD -- Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021; docs/methods.md §3).

Inner: maximise sum KL(softmax(T(x)) || softmax(S(x'))) -- the teacher's *clean* soft label,
computed once -- with the student in eval, start x + 0.001 N(0, I) unclipped, 10 steps of
eps/4.  Outer: 5/6 k(T(x) || S(x')) + 1/6 k(T(x) || S(x)), custom KL, element-wise mean, both
student passes in train mode; ``kl_scale`` 10 on CIFAR-100.

Deviation switch: ``fp16_teacher: true`` runs the teacher in half precision as the released
CIFAR-100 script does (``teacher.half()``); the default runs it in fp32."""
import torch

from .. import losses
from ..attacks.pgd import mode, pgd
from .base import METHODS, Method


@METHODS.register("rslad")
class RSLAD(Method):
    name = "rslad"
    params = {"alpha": 5 / 6, "kl_scale": 1.0, "fp16_teacher": False}
    num_teachers = (1, 1)

    def teacher(self, i, x):
        if self.p["fp16_teacher"]:
            with torch.no_grad():
                return self.teacher_models[i].half()(x.half()).float()
        return super().teacher(i, x)

    def perturb(self, student, x, y):
        self._t_nat = t_nat = self.teacher(0, x)
        with mode(student, train=False):
            return pgd(x, lambda xa: losses.kl(t_nat, student(xa), reduction="sum"), self.attack.eps,
                       self.attack.step_size, self.attack.steps, start="normal", clip_start=False)

    def loss(self, student, x, x_adv, y):
        t_nat = self._t_nat
        s_adv, s_nat = student(x_adv), student(x)
        return losses.rslad_loss(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, alpha=self.p["alpha"],
                                 kl_scale=self.p["kl_scale"]), s_adv
