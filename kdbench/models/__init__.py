"""Models (a registry) and model specs.

A model spec is one of:

* ``ARCH`` -- a registered architecture (``smallcnn``, ``cwnet``, ``resnet18``,
  ``preact-resnet18``, ``mobilenetv2``, ``wrn-28-10``, ``wrn-34-10``, ``wrn-34-20``,
  ``wrn-70-16``, ``wrn-D-W`` for any depth/width, ``vit``), sized for the dataset, with
  optional ``--weights FILE``;
* a kdbench run directory (holding ``config.yaml`` and ``*.safetensors``);
* ``path/to/file.py:factory`` or ``package.module:factory`` -- a user factory, called with
  whichever of ``num_classes``, ``in_channels``, ``input_size`` it accepts;
* ``robustbench:NAME`` -- a RobustBench model from a local model directory (lazy adapter).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from ..errors import KdbenchError
from ..registry import Registry
from .base import KDModel, ModelOutput, Normalize, classifier_of, forward_all, unwrap  # noqa: F401
from .mobilenet import MobileNetV2
from .resnet import preact_resnet18, resnet18
from .small import CWNet, SmallCNN
from .vit import ViT
from .wideresnet import WideResNet

MODELS = Registry("model")

MODELS.register("smallcnn", "small-cnn")(SmallCNN)
MODELS.register("cwnet", "papernot", "cw-9layer")(CWNet)
MODELS.register("resnet18", "resnet-18")(resnet18)
MODELS.register("preact-resnet18", "preactresnet18", "preact-resnet-18")(preact_resnet18)
MODELS.register("mobilenetv2", "mobilenet-v2")(MobileNetV2)
MODELS.register("vit", "vit-small")(ViT)
MODELS.register("wideresnet", "wrn")(WideResNet)
for _d, _w in ((28, 10), (34, 10), (34, 20), (70, 16)):
    MODELS.register(f"wrn-{_d}-{_w}")(lambda _d=_d, _w=_w, **kw: WideResNet(depth=_d, widen_factor=_w, **kw))

_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    arch: Optional[str] = None
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)  # what the model was built for

    run: Optional[Dict[str, Any]] = None  # a run directory's training summary (rundir.run_summary)

    def provenance(self) -> dict:
        out = {"spec": self.spec, "arch": self.arch, "weights": self.weights, "weights_sha256": self.weights_sha256}
        if self.run:
            out["run"] = self.run
        return out


def build_model(arch: str, num_classes: int, in_channels: int, input_size: int, **kwargs) -> nn.Module:
    """Instantiate a registered architecture for a dataset's shape."""
    m = _WRN.match(arch.lower())
    if m and arch.lower() not in MODELS:
        factory = lambda **kw: WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), **kw)  # noqa: E731
    else:
        factory = MODELS.get(arch)
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except TypeError as e:
        raise KdbenchError(f"model {arch!r}: bad arguments ({e})") from None


def _call_factory(fn, spec: str, shape: Dict[str, int]) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in shape.items() if var_kw or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    try:
        model = fn(**kwargs)
    except KdbenchError:
        raise
    except Exception as e:
        raise KdbenchError(f"model factory {spec!r} raised {type(e).__name__}: {str(e)[:160]}") from None
    if not isinstance(model, nn.Module):
        raise KdbenchError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _factory_from_spec(spec: str):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise KdbenchError(f"model file not found: {path}")
        name = f"kdbench_user_{abs(hash(str(path.resolve())))}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            raise KdbenchError(f"importing {path} failed: {type(e).__name__}: {str(e)[:160]}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise KdbenchError(f"cannot import module {target!r} ({type(e).__name__}: {str(e)[:120]})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise KdbenchError(f"{target} has no callable {attr!r}")
    return fn


def is_run_dir(spec) -> bool:
    return Path(spec).is_dir() and (Path(spec) / "config.yaml").is_file()


def load_model(spec: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
               input_size: Optional[int] = None, weights: Optional[str] = None, **kwargs) -> LoadedModel:
    """Resolve a model spec to a module in eval mode (see the module docstring for specs)."""
    from ..weights import load_weights

    shape = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    if is_run_dir(spec):
        from ..train.rundir import load_run_model

        loaded = load_run_model(spec, weights=weights)
    elif spec.startswith("robustbench:"):
        from ..adapters.robustbench import load_robustbench

        loaded = load_robustbench(spec[len("robustbench:"):], **kwargs)
    elif ":" in spec:
        model = _call_factory(_factory_from_spec(spec), spec, {k: v for k, v in shape.items() if v is not None})
        loaded = LoadedModel(model, spec)
    else:
        if None in shape.values():
            raise KdbenchError(f"model {spec!r}: a dataset is needed to size the architecture")
        if Path(spec).exists():
            raise KdbenchError(f"{spec}: not a kdbench run directory (no config.yaml); "
                               "use ARCH --weights FILE for a bare weights file")
        loaded = LoadedModel(build_model(spec, **shape, **kwargs), spec, arch=spec)
        loaded.info = dict(shape)
    if weights is not None and not is_run_dir(spec):
        loaded.weights = str(weights)
        loaded.weights_sha256 = load_weights(unwrap(loaded.model), weights)
    loaded.model.eval()
    return loaded
