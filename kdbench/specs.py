"""Model specs: one entry point that parses a spec and dispatches (timm's ``create_model``).

A model spec is one of

* ``ARCH`` -- a registered architecture (:mod:`kdbench.models`), sized for the dataset, with
  optional ``weights``;
* a kdbench run directory (``config.yaml`` + ``*.safetensors``; :mod:`kdbench.rundir`), rebuilt
  with its method's architecture changes (DARHT's STF head) and its best weights;
* ``path/to/file.py:factory`` or ``package.module:factory`` -- a user factory, called with
  whichever of ``num_classes``, ``in_channels``, ``input_size`` it accepts;
* ``robustbench:NAME`` -- a RobustBench model from a local model directory
  (:mod:`kdbench.adapters.robustbench`).

:func:`load_model` returns the ``nn.Module`` (in eval mode), as RobustBench's does;
:func:`resolve_model` returns a :class:`LoadedModel` with the provenance kdbench records.
This layer sits above models, methods and the run-directory layout (docs/architecture.md).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from .errors import KdbenchError, missing
from .models import build_model, unwrap
from .rundir import is_run_dir, read_run_config, run_summary, run_weights
from .weights import load_weights, weights_metadata

__all__ = ["LoadedModel", "load_model", "resolve_model", "is_run_dir", "load_run_model", "is_code_spec",
           "require_trusted"]


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    arch: Optional[str] = None
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)  # what the model was built for
    method: Optional[str] = None  # how the weights were trained, when their file says (kdbench's safetensors)

    run: Optional[Dict[str, Any]] = None  # a run directory's training summary (rundir.run_summary)

    def provenance(self) -> dict:
        out = {"spec": self.spec, "arch": self.arch, "weights": self.weights, "weights_sha256": self.weights_sha256}
        if self.method:
            out["method"] = self.method
        if self.run:
            out["run"] = self.run
        return out


def is_code_spec(spec) -> bool:
    """Whether resolving ``spec`` imports code: ``file.py:factory`` or ``module:factory``."""
    spec = str(spec)
    return ":" in spec and not spec.startswith("robustbench:") and not is_run_dir(spec)


def require_present(spec) -> None:
    """A spec that names a path (a run directory, ``file.py:factory``) must exist: one line
    naming it, before anything else is asked of the user."""
    spec = str(spec)
    if spec.startswith("robustbench:"):
        return
    target = spec.rpartition(":")[0] if ":" in spec else spec
    looks_like_path = target.endswith(".py") or "/" in target or "\\" in target
    if looks_like_path and not Path(target).exists():
        raise missing(target, "model")


def require_trusted(spec, where: str, trust_code: bool) -> None:
    """Refuse a code spec that came from a file (a run's ``config.yaml``), not from the user:
    nothing is imported that the user did not name on the command line or opt into with
    ``--trust-code`` (docs/guarantees.md)."""
    if is_code_spec(spec) and not trust_code:
        raise KdbenchError(f"{where} names code to import ({spec!r}); kdbench does not run code from a file: "
                           "name it on the command line or pass --trust-code")


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


def import_user_module(name: str):
    """Import a user's module (``module:factory`` specs, ``KDBENCH_PLUGINS``), looking in the
    working directory first, as ``python -m`` does: the ``kdbench`` script's own directory is the
    venv's bin/, not where the user's files are."""
    import os

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(name)


def _factory_from_spec(spec: str):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise missing(path, "model file")
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
            module = import_user_module(target)
        except Exception as e:
            raise KdbenchError(f"cannot import module {target!r} ({type(e).__name__}: {str(e)[:120]})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise KdbenchError(f"{target} has no callable {attr!r}")
    return fn


def load_run_model(run_dir, weights: Optional[str] = None) -> LoadedModel:
    """Rebuild a run's model from its config and load its best (else last) weights."""
    from .methods import get_method

    cfg = read_run_config(run_dir)
    info = cfg["dataset_info"]
    model = build_model(cfg["model"], info["num_classes"], info["in_channels"], info["input_size"],
                        **(cfg.get("model_kwargs") or {}))
    if cfg.get("method"):
        model = get_method(cfg["method"]).build_student(model, cfg.get("method_params") or {},
                                                        len(cfg.get("teachers") or []), info["num_classes"])
    path = Path(weights) if weights else run_weights(run_dir)
    sha = load_weights(unwrap(model), path)
    return LoadedModel(model, str(run_dir), arch=cfg["model"], weights=str(path), weights_sha256=sha, info=info,
                       run=run_summary(run_dir, cfg))


def resolve_model(spec: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                  input_size: Optional[int] = None, weights: Optional[str] = None, **kwargs) -> LoadedModel:
    """Resolve a model spec to a :class:`LoadedModel` whose module is in eval mode."""
    spec = str(spec)
    require_present(spec)
    shape = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    if is_run_dir(spec):
        loaded = load_run_model(spec, weights=weights)
    elif spec.startswith("robustbench:"):
        from .adapters.robustbench import load_robustbench

        model, full, path, sha, classes = load_robustbench(spec[len("robustbench:"):], **kwargs)
        loaded = LoadedModel(model, full, arch=full.rsplit("/", 1)[-1], weights=path, weights_sha256=sha,
                             info={"num_classes": classes})
    elif ":" in spec:
        model = _call_factory(_factory_from_spec(spec), spec, {k: v for k, v in shape.items() if v is not None})
        loaded = LoadedModel(model, spec)
    else:
        if None in shape.values():
            raise KdbenchError(f"model {spec!r}: a dataset is needed to size the architecture")
        if Path(spec).exists():
            raise KdbenchError(f"{spec}: not a kdbench run directory (no config.yaml); "
                               "use ARCH --weights FILE for a bare weights file")
        loaded = LoadedModel(build_model(spec, **shape, **kwargs), spec, arch=spec, info=dict(shape))
    if weights is not None and not is_run_dir(spec):
        loaded.weights = str(weights)
        loaded.weights_sha256 = load_weights(unwrap(loaded.model), weights)
        loaded.method = weights_metadata(weights).get("method")
    loaded.model.eval()
    return loaded


def load_model(spec: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
               input_size: Optional[int] = None, weights: Optional[str] = None, **kwargs) -> nn.Module:
    """The ``nn.Module`` a spec names, in eval mode (``kdbench.load_model``)."""
    return resolve_model(spec, num_classes, in_channels, input_size, weights=weights, **kwargs).model
