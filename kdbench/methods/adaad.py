"""AdaAD -- Adaptive Adversarial Distillation (Huang et al., CVPR 2023; docs/methods.md §5).

Inner: maximise sum KL(softmax(T(x')) || softmax(S(x'))) with **both models on x'** and the
gradient flowing through both; both in eval; start x + 0.001 N(0, I) unclipped; 10 steps of
eps/4 (the README's 8/255 and 2/255).  Outer: alpha KL(T(x') || S(x')) + (1 - alpha) KL(T(x) || S(x)),
temperature 1, element-wise mean (``reduction: batchmean`` for CIFAR-100).

AdaIAD (``adaiad``): the same inner maximisation with the IAD-I loss, the teacher evaluated on
x' in the KD term, tau = 30 (the official argparse default) and the trust weight from ``begin``.

Forward passes (``official_passes``, default true), as boyellow/AdaAD main.py at 9e5c6e5, which
BatchNorm's running statistics follow: AdaAD runs S(x) before S(x'); AdaIAD runs S(x), S(x'),
then S(x) again once per term that uses it (the self term from ``begin``, and the CE term even at
alpha = 1).  ``false`` runs S(x'), S(x) once each."""
import torch

from .. import losses
from ..attacks.pgd import mode, pgd
from .base import METHODS, Method, student_passes
from .iad import IAD


def adaptive_pgd(student, teacher, x, attack):
    with mode(student, train=False), mode(teacher, train=False):
        with torch.enable_grad():
            return pgd(x, lambda xa: losses.kl(teacher(xa), student(xa), reduction="sum"), attack.eps,
                       attack.step_size, attack.steps, start="normal", clip_start=False)


@METHODS.register("adaad")
class AdaAD(Method):
    name = "adaad"
    params = {"alpha": 1.0, "reduction": "mean", "official_passes": True}
    num_teachers = (1, 1)

    def perturb(self, student, x, y):
        return adaptive_pgd(student, self.teacher_models[0], x, self.attack)

    def loss(self, student, x, x_adv, y):
        t_adv = self.teacher(0, x_adv)
        t_nat = self.teacher(0, x) if self.p["alpha"] != 1 else t_adv
        # S(x) runs even at alpha = 1 (main.py's ori_outputs: it moves the BN statistics)
        s_adv, s_nat = student_passes(student, "na" if self.p["official_passes"] else "an", x, x_adv)
        return losses.adaad_loss(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, t_adv=t_adv, alpha=self.p["alpha"],
                                 reduction=self.p["reduction"]), s_adv


@METHODS.register("adaiad")
class AdaIAD(IAD):
    name = "adaiad"
    params = {"alpha": 1.0, "tau": 30.0, "beta": 0.1, "begin": None, "released_lr_schedule": False,
              "official_passes": True}

    def passes(self, started: bool) -> str:
        """main.py's AdaAD_with_IAD1: ori_outputs = S(x) (unused), adv_outputs = S(x'), then S(x)
        in the self term (from ``begin``) and in the CE term."""
        return ("nann" if started else "nan") if self.p["official_passes"] else "an"

    def perturb(self, student, x, y):
        return adaptive_pgd(student, self.teacher_models[0], x, self.attack)

    def loss(self, student, x, x_adv, y):
        t_adv = self.teacher(0, x_adv)
        started = self.epoch >= self.begin
        w = losses.iad_trust(t_adv, y, self.p["beta"]) if started else None
        s_adv, s_nat = student_passes(student, self.passes(started), x, x_adv)
        return losses.iad_loss(s_nat=s_nat, s_adv=s_adv, y=y, w=w, t_nat=t_adv, variant="I",
                               alpha=self.p["alpha"], tau=self.p["tau"]), s_adv
