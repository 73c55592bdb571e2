"""Standard (natural) training: mean CE on clean inputs."""
from .. import losses
from .base import METHODS, Method


@METHODS.register("natural", "standard")
class Natural(Method):
    name = "natural"
    select_metric = "clean"

    def loss(self, student, x, x_adv, y):
        logits = student(x)
        return losses.natural_loss(s_nat=logits, y=y), logits
