"""kdbench: a benchmarking harness for adversarial knowledge distillation.

The public API (imported lazily, so ``import kdbench`` stays cheap, the way timm's face does)::

    import kdbench
    model = kdbench.load_model("runs/teacher")            # an nn.Module in eval mode
    res = kdbench.evaluate(model, x, y, eps=8/255)        # an EvalResult (kdbench.evaluation.result)
    kdbench.train(cfg, "runs/x")                           # a TrainConfig -> the run's metric history

Layers and data flow: docs/architecture.md.
"""
from importlib import import_module

from .version import __version__  # noqa: F401

# public name -> (module, attribute)
_API = {
    "evaluate": ("kdbench.evaluation.pipeline", "evaluate"),
    "EvalResult": ("kdbench.evaluation.result", "EvalResult"),
    "load_model": ("kdbench.specs", "load_model"),
    "resolve_model": ("kdbench.specs", "resolve_model"),
    "train": ("kdbench.training.engine", "train"),
    "TrainConfig": ("kdbench.config", "TrainConfig"),
    "get_dataset": ("kdbench.data", "get_dataset"),
    "register_attack": ("kdbench.attacks.registry", "register_attack"),
    "KdbenchError": ("kdbench.errors", "KdbenchError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'kdbench' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
