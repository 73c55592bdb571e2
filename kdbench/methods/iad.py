"""IAD -- Introspective Adversarial Distillation (Zhu et al., ICLR 2022; docs/methods.md §2).

Inner: as ARD (student CE, summed, train mode, uniform start unclipped).
IAD-I  (one teacher): ARD with tau = 1 and batchmean, plus from epoch ``begin`` the
introspection term (1 - w) KL(S(x) || S(x')), w = softmax(T(x'))_y ** beta (no gradient).
IAD-II (teachers: adversarial, then standard): both see x'; the adversarial teacher's term is
weighted by w.  ``begin: null`` resolves to 30 % (IAD-I) / 20 % (IAD-II) of the epochs --
the official 60 / 40 of 200; paper-scale configs set 60 / 40 explicitly.

Forward passes (``official_passes``, default true): the student's train-mode passes in the order
and count of the official scripts, which BatchNorm's running statistics follow (IAD-I.py and
IAD-II.py at ZFancy/IAD a8091a8): IAD-I runs S(x'), S(x') again (``basicop``), then S(x) once per
term that uses it (the introspection term from ``begin``, and the CE term even at alpha = 1);
IAD-II runs S(x') and, from ``begin``, S(x).  ``false`` runs S(x'), S(x) once each."""
from .. import losses
from .base import METHODS, student_passes
from ..attacks.pgd import ce_pgd
from .ard import ARD


@METHODS.register("iad", "iad-i")
class IAD(ARD):
    name = "iad"
    params = {"alpha": 1.0, "tau": 1.0, "beta": 0.1, "begin": None, "released_lr_schedule": False,
              "official_passes": True}
    num_teachers = (1, 1)
    begin_frac = 0.3

    def perturb(self, student, x, y):
        return ce_pgd(student, x, y, self.attack, train_mode=True, start="uniform", clip_start=False)

    def begin_epoch(self, epoch, epochs, lr_scale=1.0):
        super().begin_epoch(epoch, epochs, lr_scale)
        b = self.p["begin"]
        self.begin = int(round(self.begin_frac * epochs)) if b is None else int(b)

    def passes(self, started: bool) -> str:
        """IAD-I.py's train(): outputs = S(x'), basicop = S(x'), then S(x) in the self term (from
        ``begin``) and in the CE term."""
        return ("aann" if started else "aan") if self.p["official_passes"] else "an"

    def loss(self, student, x, x_adv, y):
        started = self.epoch >= self.begin
        w = losses.iad_trust(self.teacher(0, x_adv), y, self.p["beta"]) if started else None
        s_adv, s_nat = student_passes(student, self.passes(started), x, x_adv)
        return losses.iad_loss(s_nat=s_nat, s_adv=s_adv, y=y, w=w, t_nat=self.teacher(0, x), variant="I",
                               alpha=self.p["alpha"], tau=self.p["tau"]), s_adv


@METHODS.register("iad-ii")
class IAD2(IAD):
    name = "iad-ii"
    params = {"alpha1": 0.5, "alpha2": 0.25, "tau": 1.0, "beta": 0.1, "begin": None,
              "released_lr_schedule": False, "official_passes": True}
    num_teachers = (2, 2)
    begin_frac = 0.2

    def passes(self, started: bool) -> str:
        """IAD-II.py's train(): outputs = S(x'), and S(x) only inside the self term (from ``begin``)."""
        return ("an" if started else "a") if self.p["official_passes"] else "an"

    def loss(self, student, x, x_adv, y):
        t_adv = self.teacher(0, x_adv)
        started = self.epoch >= self.begin
        w = losses.iad_trust(t_adv, y, self.p["beta"]) if started else None
        s_adv, s_nat = student_passes(student, self.passes(started), x, x_adv)
        return losses.iad_loss(s_nat=s_nat, s_adv=s_adv, y=y, w=w, t_adv=t_adv, t_std_adv=self.teacher(1, x_adv),
                               variant="II", alpha1=self.p["alpha1"], alpha2=self.p["alpha2"],
                               tau=self.p["tau"]), s_adv
