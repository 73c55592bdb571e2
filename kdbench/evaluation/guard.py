"""What kdbench checks about the model it evaluates (docs/guarantees.md).

* :class:`GuardedModel` wraps every forward pass: logits must be a floating (batch, classes)
  tensor and finite, and anything the model raises becomes one line naming the model and the
  stage (clean pass, gradient probe, an attack, the validity checks).
* :func:`model_state` / :func:`restore_model` snapshot and restore the caller's model exactly
  (train/eval mode of every module, ``requires_grad``, parameters' and buffers' values, devices
  and memory layout): :func:`kdbench.evaluate` has no side effect on the model it is given.
* :func:`content_hash` is the sha256 of the parameters and buffers actually evaluated: the
  store and ``--resume`` key on it, not on a file name.
* :func:`behaviour_flags`: repeated passes over one batch that differ (a randomised defence,
  as reference AutoAttack checks) and outputs that change with the batch's composition
  (BatchNorm left in train mode) are flagged.
"""
from __future__ import annotations

import hashlib
from typing import List

import torch
import torch.nn as nn

from ..errors import KdbenchError


class ModelError(KdbenchError):
    """The evaluated model misbehaved (raised, returned a non-tensor, NaN or integer logits)."""


class GuardedModel(nn.Module):
    """``model`` with its outputs validated and its exceptions named (``stage`` says where).

    ``channels_last``: the model (converted by the caller) runs on channels-last copies of 4-d
    inputs, and the gradient with respect to an input comes back in the input's standard layout:
    attack libraries flatten gradients with ``.view`` (pyautoattack's APGD-T), which a
    channels-last gradient refuses."""

    def __init__(self, model: nn.Module, name: str, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.name = name
        self.stage = "the clean pass"
        self.channels_last = channels_last

    @property
    def module(self) -> nn.Module:
        """The guarded model, as DDP's ``module`` (``models.unwrap``: classifier and feature access)."""
        return self.model

    def forward(self, x, **kwargs):
        inp = x
        if self.channels_last and x.dim() == 4:
            if x.requires_grad:
                x.register_hook(lambda g: g.contiguous())
            inp = x.contiguous(memory_format=torch.channels_last)
        try:
            out = self.model(inp, **kwargs)
        except KdbenchError:
            raise
        except Exception as e:
            raise ModelError(f"model {self.name} raised {type(e).__name__} during {self.stage}: "
                             f"{' '.join(str(e).split())[:160]}") from None
        if kwargs:  # a KDModel's features=True: a feature record, not logits
            return out
        if not torch.is_tensor(out):
            raise ModelError(f"model {self.name} returned {type(out).__name__}, not a logits tensor (return the "
                             "logits alone, e.g. out[0] of a tuple)")
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ModelError(f"model {self.name} must return logits of shape (batch, classes), got "
                             f"{tuple(out.shape)} for a batch of {x.shape[0]}")
        if not out.is_floating_point():
            raise ModelError(f"model {self.name} returned {str(out.dtype).replace('torch.', '')} logits; "
                             "attacks need floating-point logits")
        if not bool(torch.isfinite(out.detach()).all()):
            raise ModelError(f"model {self.name} returned NaN or infinite logits during {self.stage} "
                             f"(inputs in [{x.min().item():.3g}, {x.max().item():.3g}])")
        return out


def model_name(model: nn.Module, provenance) -> str:
    spec = ((provenance or {}).get("model") or {}).get("spec")
    return str(spec) if spec else type(model).__name__


def content_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if not torch.is_tensor(v):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_state(model: nn.Module) -> dict:
    """What :func:`restore_model` puts back."""
    return {"training": [m.training for m in model.modules()],
            "params": [(p, p.requires_grad, p.device, p.is_contiguous()) for p in model.parameters()],
            "buffers": [(b, b.detach().clone(), b.device, b.is_contiguous()) for b in model.buffers()]}


def restore_model(model: nn.Module, st: dict) -> None:
    for m, mode in zip(model.modules(), st["training"]):
        m.training = mode
    with torch.no_grad():
        for p, rg, dev, contig in st["params"]:
            if p.device != dev or (contig and not p.is_contiguous()):
                p.data = p.data.to(dev).contiguous() if contig else p.data.to(dev)
            p.requires_grad_(rg)
        for b, saved, dev, contig in st["buffers"]:
            if b.device != dev or (contig and not b.is_contiguous()):
                b.data = b.data.to(dev).contiguous() if contig else b.data.to(dev)
            b.copy_(saved.to(b.device))


def _differs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the logits' scale."""
    return float((a - b).abs().max() / (1 + a.abs().max()))


def behaviour_flags(model: nn.Module, x: torch.Tensor, dev, m: int = 16) -> List[dict]:
    """Flags for a randomised model (two passes over the same batch differ) and a
    batch-dependent one (a point's logits change when the rest of its batch changes)."""
    flags = []
    xs = x[:m].to(dev)
    with torch.no_grad():
        a, b = model(xs), model(xs)
        d = _differs(a, b)
        if d > 1e-4:
            flags.append({"name": "randomized", "message": "two forward passes over the same batch differ: the "
                          "model is randomised; fixed-randomness attacks overestimate its robustness "
                          "(use autoattack:version=rand, which averages gradients over passes)",
                          "evidence": {"relative_difference": d, "points": len(xs)}})
        elif len(xs) >= 2:
            half = len(xs) // 2
            c = torch.cat([model(xs[:half]), model(xs[half:])])
            d = _differs(a, c)
            if d > 1e-3:
                flags.append({"name": "batch_dependent", "message": "a point's logits change with the other points "
                              "in its batch (BatchNorm in train mode?): robust accuracy depends on the batch size",
                              "evidence": {"relative_difference": d, "points": len(xs)}})
    return flags
