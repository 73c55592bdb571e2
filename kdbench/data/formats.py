"""Readers for the standard on-disk dataset formats, with no torchvision and no pickle execution.

Each reader returns ``(x, y)`` as NumPy arrays: ``x`` uint8 NHWC (or NHW for grey images),
``y`` int64.  Formats are the ones torchvision also uses:

* IDX (MNIST, Fashion-MNIST), optionally gzip-compressed (LeCun's format: a magic number
  whose third byte is the element type and fourth the number of dimensions, then the sizes
  as big-endian int32, then the data);
* CIFAR-10/100 "python" batches (pickled dicts: read with a restricted unpickler that only
  rebuilds NumPy arrays and refuses every other global) and the CIFAR "binary" batches;
* SVHN ``*_32x32.mat`` (MATLAB v5, ``X`` as HxWxCxN, label 10 meaning digit 0);
* ImageFolder trees (``root/<class>/<image>``) and the Tiny-ImageNet-200 layout;
* ``.npz`` with float ``x`` in [0, 1] (NCHW) and integer ``y``.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..errors import KdbenchError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a NumPy array."""
    data = _open(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise KdbenchError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 0
    if len(data) - offset != count * dtype.itemsize:
        raise KdbenchError(f"{path}: IDX payload size does not match its header {shape}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays (CIFAR 'python' batches) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_cifar_python_batch(path) -> Dict:
    """Load one CIFAR 'python' batch without executing arbitrary pickled code."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise KdbenchError(f"{path}: not a plain CIFAR batch ({e})") from None
    if not isinstance(d, dict):
        raise KdbenchError(f"{path}: not a CIFAR batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def cifar_python(paths: List[Path], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        d = read_cifar_python_batch(p)
        if "data" not in d or label_key not in d:
            raise KdbenchError(f"{p}: CIFAR batch lacks 'data' or {label_key!r}")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


def cifar_binary(paths: List[Path], label_bytes: int, label_index: int) -> Tuple[np.ndarray, np.ndarray]:
    """CIFAR binary version: each record is ``label_bytes`` label bytes then 3072 pixel bytes."""
    xs, ys = [], []
    rec = label_bytes + 3072
    for p in paths:
        raw = np.frombuffer(_open(p), dtype=np.uint8)
        if raw.size % rec:
            raise KdbenchError(f"{p}: size is not a multiple of the {rec}-byte CIFAR record")
        raw = raw.reshape(-1, rec)
        ys.append(raw[:, label_index].astype(np.int64))
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


def svhn_mat(path) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    m = loadmat(str(path))
    if "X" not in m or "y" not in m:
        raise KdbenchError(f"{path}: SVHN .mat lacks 'X' or 'y'")
    x = np.asarray(m["X"], dtype=np.uint8).transpose(3, 0, 1, 2)
    y = np.asarray(m["y"], dtype=np.int64).reshape(-1) % 10  # label 10 is digit 0
    return x, y


_IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}


def _read_image(path: Path, size=None, mode="RGB") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def image_folder(root, classes: List[str] | None = None, size=None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """ImageFolder layout: ``root/<class name>/**/<image>``, classes sorted by name."""
    root = Path(root)
    if classes is None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    xs, ys = [], []
    for ci, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in _IMG_EXT)
        for f in files:
            xs.append(_read_image(f, size))
            ys.append(ci)
    if not xs:
        raise KdbenchError(f"{root}: no images found in class folders")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def tiny_imagenet(root) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Tiny-ImageNet-200: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` with
    ``val/val_annotations.txt`` (file, wnid, box).  The labelled val split is the test split."""
    root = Path(root)
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    xtr, ytr, _ = image_folder(root / "train", wnids, size=64)
    index = {w: i for i, w in enumerate(wnids)}
    xs, ys = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise KdbenchError(f"{root}/val/val_annotations.txt: unknown class {parts[1]!r}")
        xs.append(_read_image(root / "val" / "images" / parts[0], size=64))
        ys.append(index[parts[1]])
    return {"train": (xtr, ytr), "test": (np.stack(xs), np.asarray(ys, dtype=np.int64))}


def read_npz(path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """User data: ``x``/``y`` (an evaluation set) or ``x_train``/``y_train``/``x_test``/``y_test``.

    ``x`` is float in [0, 1], NCHW; ``y`` integer class ids.  Loaded with ``allow_pickle=False``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise KdbenchError(f"{path}: cannot read npz without pickle ({e})") from None
    except (OSError, EOFError) as e:
        raise KdbenchError(f"{path}: not a readable .npz file ({e})") from None
    splits = {}
    for split, (kx, ky) in {"test": ("x", "y"), "train": ("x_train", "y_train")}.items():
        if kx in arrays:
            splits[split] = (arrays[kx], arrays.get(ky))
    if "x_test" in arrays:
        splits["test"] = (arrays["x_test"], arrays.get("y_test"))
    if "test" not in splits:
        raise KdbenchError(f"{path}: expected arrays 'x' and 'y' (or x_test/y_test); found {sorted(arrays)}")
    for split, (x, y) in splits.items():
        if y is None:
            raise KdbenchError(f"{path}: {split} images have no labels array")
        check_images(x, y, str(path))
    return splits


def check_images(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Validate user-supplied float images (NCHW, [0, 1], finite) and integer labels."""
    if x.ndim != 4:
        raise KdbenchError(f"{where}: images must be 4-d NCHW, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise KdbenchError(f"{where}: images look NHWC {tuple(x.shape)}; kdbench expects NCHW")
    if y.ndim != 1 or len(y) != len(x):
        raise KdbenchError(f"{where}: labels must be 1-d with one per image, got {tuple(y.shape)} for {len(x)} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise KdbenchError(f"{where}: labels must be integers, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise KdbenchError(f"{where}: negative label {int(y.min())}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise KdbenchError(f"{where}: images contain NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise KdbenchError(f"{where}: image values must lie in [0, 1], found [{x.min():.4g}, {x.max():.4g}]")
    elif x.dtype != np.uint8:
        raise KdbenchError(f"{where}: images must be float in [0, 1] or uint8, got {x.dtype}")
