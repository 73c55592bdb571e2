"""adv-lib adapter: ``run(model, x, y)`` over an adv-lib attack function
``adv_lib.attacks.<module>.<fn>(model, x, y, **params)``, which returns each point's smallest
adversarial example found (the input itself where it failed); kdbench re-checks every returned x'
(prediction, box, distance).

adv-lib 0.2.8's ``adv_lib.attacks`` package imports every attack when it loads, among them ones
that import torchvision and visdom; with a torch that has no matching torchvision (kdbench's CPU
install) that import fails.  The attack modules kdbench uses import only torch and
``adv_lib.utils``, so when the package import fails the module is loaded from its file in the
installed adv-lib.  adv-lib is installed without its dependencies (scripts/install.sh)."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..errors import KdbenchError

_LOADED: dict = {}


def advlib_module(module: str):
    """``adv_lib.attacks.<module>``, loaded from its file when the package cannot be imported."""
    if module in _LOADED:
        return _LOADED[module]
    spec = importlib.util.find_spec("adv_lib")
    if spec is None or not spec.submodule_search_locations:
        raise KdbenchError("adv-lib is not installed: pip install --no-deps adv-lib==0.2.8 "
                           "(scripts/install.sh does; docs/install.md)")
    try:
        mod = importlib.import_module(f"adv_lib.attacks.{module}")
    except (ImportError, RuntimeError):  # the package's __init__ imports torchvision and visdom: load one file
        path = Path(list(spec.submodule_search_locations)[0]) / "attacks" / f"{module}.py"
        fspec = importlib.util.spec_from_file_location(f"kdbench_advlib_{module}", path)
        mod = importlib.util.module_from_spec(fspec)
        fspec.loader.exec_module(mod)
    _LOADED[module] = mod
    return mod


def advlib_run(module: str, fn: str, **params):
    def run(model, x, y):
        return getattr(advlib_module(module), fn)(model, x, y, **params)

    return run
