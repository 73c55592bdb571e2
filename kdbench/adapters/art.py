"""IBM ART adapter: wraps the model as a ``PyTorchClassifier`` (clip values [0, 1], the device's
type), calls ``<Attack>(classifier, **params).generate`` on numpy arrays and returns a tensor on
the input's device.  eps and norm are filled in for the attacks that take them."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

_ART_NORM = {"ProjectedGradientDescent", "FastGradientMethod", "AutoProjectedGradientDescent", "SquareAttack"}
_ART_NO_EPS = {"DeepFool", "CarliniL2Method"}
_ART_NO_VERBOSE = {"FastGradientMethod"}


def art_run(attack_cls: str, eps, norm, num_classes, **params):
    def run(model, x, y):
        import art.attacks.evasion as ev
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=num_classes, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.device.type == "cuda" else "cpu")
        kw = dict(params)
        if attack_cls not in _ART_NO_EPS:
            kw.setdefault("eps", eps)
        if attack_cls in _ART_NORM:
            kw.setdefault("norm", np.inf if norm == "Linf" else 2)
        atk = getattr(ev, attack_cls)(clf, **kw) if attack_cls in _ART_NO_VERBOSE \
            else getattr(ev, attack_cls)(clf, verbose=False, **kw)
        out = atk.generate(x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
        return torch.from_numpy(out).to(x.device, x.dtype)

    return run
