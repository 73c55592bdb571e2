"""The method base class and registry (kdbench.methods' docstring says what a method is)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import KdbenchError
from ..registry import Registry

METHODS = Registry("method")


@dataclass
class InnerMaxConfig:
    """The training-time inner maximisation budget (docs/methods.md §0.3)."""
    eps: float
    step_size: float
    steps: int


class Method:
    """Base class.  Subclasses set ``name``, ``params`` (every default, under the paper's names:
    the only place a method's defaults live), ``num_teachers`` (min, max) and implement
    ``perturb`` and ``loss``."""

    name: ClassVar[str] = ""
    params: ClassVar[Dict[str, Any]] = {}
    num_teachers: ClassVar[Tuple[int, Optional[int]]] = (0, 0)
    step_ratio: ClassVar[float] = 0.25  # default step size = ratio * eps
    steps: ClassVar[int] = 10
    select_metric: ClassVar[str] = "pgd"  # checkpoint selection metric for this method

    def __init__(self, params: Dict[str, Any], attack: InnerMaxConfig, teachers: List[nn.Module], num_classes: int):
        unknown = set(params) - set(self.params)
        if unknown:
            raise KdbenchError(f"method {self.name!r}: unknown parameter(s) {sorted(unknown)}; "
                               f"known: {sorted(self.params)}")
        self.p = {**self.params, **params}
        self.attack = attack
        self.teacher_models = teachers
        self.num_classes = num_classes
        self.epoch = 0
        lo, hi = self.num_teachers
        if len(teachers) < lo or (hi is not None and len(teachers) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number of'}"
            raise KdbenchError(f"method {self.name!r} takes {want} teacher(s), got {len(teachers)}")

    # --- hooks ------------------------------------------------------------------------
    def perturb(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """Inner maximisation.  ``student`` is the bare module (not the DDP wrapper)."""
        return None

    def loss(self, student: nn.Module, x: torch.Tensor, x_adv: Optional[torch.Tensor], y: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outer loss; returns (loss, logits used for the running training accuracy); a loss of
        None skips the batch (no optimizer step)."""
        raise NotImplementedError

    # --- optional hooks ------------------------------------------------------------------
    @classmethod
    def build_student(cls, model: nn.Module, params: Dict[str, Any], num_teachers: int, num_classes: int
                      ) -> nn.Module:
        """Architecture changes the method makes to the student (DARHT's STF head).  Also applied
        when a run directory is loaded, so the checkpoint loads into the right module."""
        return model

    def prepare(self, student: nn.Module, train_set, augment, fresh: bool) -> None:
        """Called once before training with the bare student, the training images (an ImageSet)
        and the train augmentation; ``fresh`` is False when resuming or with ``init_from``."""

    def begin_epoch(self, epoch: int, epochs: int, lr_scale: float = 1.0) -> None:
        """Called before each epoch; ``lr_scale`` is the current lr over the base lr."""
        self.epoch = epoch

    def adjust_lr(self, epoch: int, epochs: int, lr: float, base_lr: float, milestones, gamma: float) -> float:
        """Lets a method reproduce a released schedule bug behind a switch (ARD, TAKD)."""
        return lr

    def teacher(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of frozen teacher ``i`` on ``x`` (no gradient)."""
        with torch.no_grad():
            return self.teacher_models[i](x)

    # --- state saved with the checkpoint (adaptive weights and the like) ----------------

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


def student_passes(student: nn.Module, order: str, x: torch.Tensor, x_adv: torch.Tensor
                   ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The student's train-mode forward passes in an official script's order and count, ``order``
    a string over ``a`` (x') and ``n`` (x) (docs/methods.md, "Forward passes").  BatchNorm's running
    statistics move with every train-mode pass, so the evaluated model depends on the order and
    count; the gradient does not: in train mode BatchNorm normalises by the batch, so a repeated
    pass gives the same logits.  The loss therefore uses each input's first pass and a repeat runs
    without gradient, moving the statistics as the script's extra pass does.  Returns
    (S(x'), S(x)); an input absent from ``order`` gives None."""
    out: Dict[str, torch.Tensor] = {}
    for c in order:
        inp = x_adv if c == "a" else x
        if c in out:
            with torch.no_grad():
                student(inp)
        else:
            out[c] = student(inp)
    return out.get("a"), out.get("n")


def get_method(name: str):
    return METHODS.get(name)
