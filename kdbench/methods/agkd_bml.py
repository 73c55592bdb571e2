"""AGKD-BML -- attention-guided knowledge distillation and bi-directional metric learning
(Wang et al., ICCV 2021; seed 003; docs/methods.md §9).

Inner, both attacks with the student in eval, uniform start *not* clipped to [0, 1] (the
official main.py adds U(-eps, eps) and clamps only after each step; ``clip_start: true`` clips
it), 10 sign steps of eps/4:
forward AE x1' aimed at the most confusing class y_mc = argmax_{c != y} S(x1)_c (minimise
CE(S(x1'), y_mc)); backward AE x2' from a random training image x2 of class y_mc (through the
train augmentation) aimed back at y (minimise CE(S(x2'), y)).
Outer: one student pass (train mode) on [x1'; x1; x2'] (BN statistics over all 3B images), one
teacher pass on [x1; x2]; label-smoothed CE (0.5) + MART (beta 6) + L1 between min-max channel-sum
attention maps (student on x1' vs teacher on x1, student on x2' vs teacher on x2) + 2 x angular
triplet (anchor x1', positive x1, negative x2'; margin 0.03, 1e-3 embedding penalty).
The teacher is naturally trained; the student starts from its weights when the architectures
match (``init_from_teacher``).  Checkpoints are selected by clean accuracy, as the official code."""
import torch
import torch.nn.functional as F

from .. import losses
from ..attacks.pgd import mode, pgd
from ..models import forward_all, unwrap
from .base import METHODS, Method


@METHODS.register("agkd-bml", "agkd")
class AGKDBML(Method):
    name = "agkd-bml"
    params = {"smoothing": 0.5, "beta": 6.0, "lam1": 2.0, "margin": 0.03, "lam2": 1e-3, "init_from_teacher": True,
              "clip_start": False}
    num_teachers = (1, 1)
    select_metric = "clean"

    def prepare(self, student, train_set, augment, fresh):
        self.images, self.augment = train_set, augment
        self.pools = [torch.nonzero(train_set.y == c).flatten() for c in range(self.num_classes)]
        teacher = unwrap(self.teacher_models[0])
        same = {k: v.shape for k, v in student.state_dict().items()} == \
            {k: v.shape for k, v in teacher.state_dict().items()}
        self.initialised_from_teacher = bool(fresh and same and self.p["init_from_teacher"])
        if self.initialised_from_teacher:
            student.load_state_dict(teacher.state_dict())

    def backward_images(self, cls: torch.Tensor, device) -> torch.Tensor:
        """One random training image of each requested class (with replacement), train-augmented."""
        idx = []
        for c in cls.tolist():
            pool = self.pools[c]
            if len(pool) == 0:  # a class absent from the training subset: fall back to any image
                pool = torch.arange(len(self.images))
            idx.append(pool[torch.randint(len(pool), ())])
        idx = torch.stack(idx)
        x2 = self.images.images(idx).to(device)
        if self.augment is not None and self.augment.active:
            x2 = self.augment.apply(x2, self.augment.sample(len(idx), x2.shape[-2:], None))
        return x2

    def perturb(self, student, x, y):
        a = self.attack
        with mode(student, train=False):
            with torch.no_grad():
                logits = student(x).float()
            y_mc = logits.scatter(1, y[:, None], -1e4).argmax(1)
            clip = bool(self.p["clip_start"])
            x1_adv = pgd(x, lambda xa: F.cross_entropy(student(xa), y_mc, reduction="sum"), a.eps, a.step_size,
                         a.steps, start="uniform", clip_start=clip, descend=True)
            x2 = self.backward_images(y_mc, x.device)
            x2_adv = pgd(x2, lambda xa: F.cross_entropy(student(xa), y, reduction="sum"), a.eps, a.step_size,
                         a.steps, start="uniform", clip_start=clip, descend=True)
        return x1_adv, x2, x2_adv

    def loss(self, student, x, x_adv, y):
        x1_adv, x2, x2_adv = x_adv
        b = len(y)
        s = forward_all(student, torch.cat([x1_adv, x, x2_adv]))
        with torch.no_grad():
            t = forward_all(self.teacher_models[0], torch.cat([x, x2]))
        s_adv, s_nat = s.logits[:b], s.logits[b:2 * b]
        loss = losses.agkd_bml_loss(
            s_nat=s_nat, s_adv=s_adv, y=y, fm_s_adv=s.feature_map[:b], fm_t_nat=t.feature_map[:b],
            fm_s_back=s.feature_map[2 * b:], fm_t_back=t.feature_map[b:], e_nat=s.embedding[b:2 * b],
            e_adv=s.embedding[:b], e_back=s.embedding[2 * b:], smoothing=self.p["smoothing"], beta=self.p["beta"],
            lam1=self.p["lam1"], margin=self.p["margin"], lam2=self.p["lam2"])
        return loss, s_adv
