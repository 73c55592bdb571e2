"""torchattacks adapter: ``run(model, x, y)`` over ``torchattacks.<Class>(model, **params)(x, y)``."""
from __future__ import annotations


def torchattacks_run(cls_name: str, **params):
    def run(model, x, y):
        import torchattacks

        return getattr(torchattacks, cls_name)(model, **params)(x, y)

    return run
