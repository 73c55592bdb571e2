"""Safe weight files: written as safetensors, read from safetensors or ``torch.load(weights_only=True)``.

A file that needs arbitrary code to unpickle is refused, never executed.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path
from typing import Dict, Optional

import torch

from .errors import KdbenchError, missing
from .fsutil import atomic_write  # noqa: F401  (re-exported: callers import it from here)

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "student")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_safetensors(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The safetensors bytes of ``tensors`` with the JSON header's keys sorted, so equal weights and
    metadata give an equal file and sha256 (safetensors writes its metadata in hash-map order,
    which differs from one process to the next).  The header stays padded to 8 bytes; the tensor
    data and their offsets are unchanged."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + raw[8 + n:]


def save_weights(model: torch.nn.Module, path, metadata: Optional[Dict[str, str]] = None) -> None:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = canonical_safetensors(sd, metadata)
    atomic_write(Path(path), lambda p: Path(p).write_bytes(data))


def load_state_dict(path) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``.

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix (DataParallel / DDP) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(path, "weights file")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:
            raise KdbenchError(f"{path}: not a valid safetensors file ({e})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise KdbenchError(f"refusing to load {path}: it is a pickle that needs arbitrary code to load "
                               f"({first[:120]}); save it as safetensors or a plain state_dict") from None
        except Exception as e:
            raise KdbenchError(f"{path}: cannot read weights ({type(e).__name__}: {str(e)[:120]})") from None
    for _ in range(3):
        if isinstance(sd, dict):
            nested = next((k for k in _NESTED_KEYS if k in sd and isinstance(sd[k], dict)), None)
            if nested is None:
                break
            sd = sd[nested]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise KdbenchError(f"{path}: does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def weights_metadata(path) -> Dict[str, str]:
    """The metadata a safetensors file carries (kdbench's: ``method``, ``epoch``, ``kdbench``,
    ``select``); empty for other files or files without it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def load_weights(model: torch.nn.Module, path) -> str:
    """Load ``path`` into ``model`` strictly; returns the file's sha256."""
    sd = load_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise KdbenchError(f"{path}: weights do not fit the model ({msg[:200]})") from None
    return sha256_file(path)
