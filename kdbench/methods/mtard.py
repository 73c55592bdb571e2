"""MTARD -- Multi-Teacher Adversarial Robustness Distillation (Zhao et al., ECCV 2022; docs/methods.md §4).

Teachers: the adversarial teacher first, the natural teacher second.
Inner: student CE (mean) PGD in eval, start x + 0.001 N(0, I) unclipped, 10 steps of eps/4.
Outer: w_adv k(T_adv(x') || S(x')) + w_nat k(T_nat(x) || S(x)) (custom KL, element-wise mean).
Adaptive weights: L0 recorded on the very first batch; at every step, before the backward
pass, w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat)), r = (L / L0) ** beta, and the
loss uses the updated weights.  eta decays by the lr's factor (x0.1 with each lr decay)."""
from .. import losses
from .base import METHODS, Method
from ..attacks.pgd import ce_pgd


@METHODS.register("mtard")
class MTARD(Method):
    name = "mtard"
    params = {"eta": 0.025, "beta": 1.0, "kl_scale": 1.0, "w_nat": 0.5}
    num_teachers = (2, 2)

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.w_nat = float(self.p["w_nat"])
        self.l0 = None
        self.eta = self.p["eta"]

    def begin_epoch(self, epoch, epochs, lr_scale=1.0):
        super().begin_epoch(epoch, epochs, lr_scale)
        self.eta = self.p["eta"] * lr_scale

    def perturb(self, student, x, y):
        return ce_pgd(student, x, y, self.attack, train_mode=False, start="normal", clip_start=False,
                      reduction="mean")

    def loss(self, student, x, x_adv, y):
        t_adv, t_nat = self.teacher(0, x_adv), self.teacher(1, x)
        s_adv, s_nat = student(x_adv), student(x)
        l_adv, l_nat = losses.mtard_terms(s_nat=s_nat, s_adv=s_adv, t_nat=t_nat, t_adv=t_adv,
                                          kl_scale=self.p["kl_scale"])
        la, ln = l_adv.item(), l_nat.item()
        if self.l0 is None:
            self.l0 = (la, ln)
        w_adv, self.w_nat = losses.mtard_update(self.w_nat, la, ln, *self.l0, eta=self.eta, beta=self.p["beta"])
        return w_adv * l_adv + self.w_nat * l_nat, s_adv

    def state_dict(self):
        return {"w_nat": self.w_nat, "l0": list(self.l0) if self.l0 else None}

    def load_state_dict(self, state):
        if state:
            self.w_nat = state["w_nat"]
            self.l0 = tuple(state["l0"]) if state.get("l0") else None
