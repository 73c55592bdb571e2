"""Dataset loaders on small files written in the real on-disk formats."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from kdbench.data import Augment, formats, get_dataset, iterate, shard_indices
from kdbench.errors import KdbenchError


def write_idx(path, arr, compress):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_idx_dir(d, compress, n_train=20, n_test=10):
    rng = np.random.RandomState(0)
    sets = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.randint(0, 256, (n, 28, 28))
        y = rng.randint(0, 10, n)
        suffix = ".gz" if compress else ""
        write_idx(d / f"{prefix}-images-idx3-ubyte{suffix}", x, compress)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{suffix}", y, compress)
        sets[prefix] = (x, y)
    return sets


@pytest.mark.parametrize("compress", [True, False])
def test_idx_mnist_and_fashion(tmp_path, compress):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sets = make_idx_dir(raw, compress)
    ds = get_dataset("mnist", data_dir=str(tmp_path), download=False)
    assert ds.info.num_classes == 10 and ds.info.eps == 0.3 and ds.info.input_size == 28
    assert ds.train.x.shape == (20, 1, 28, 28) and ds.train.x.dtype == torch.uint8
    np.testing.assert_array_equal(ds.train.x[:, 0].numpy(), sets["train"][0])
    np.testing.assert_array_equal(ds.test.y.numpy(), sets["t10k"][1])
    x = ds.test.images()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x[3, 0] * 255, torch.tensor(sets["t10k"][0][3], dtype=torch.float32))

    fm = tmp_path / "fm"
    fm.mkdir()
    make_idx_dir(fm, compress)
    ds = get_dataset("fashion-mnist", data_dir=str(fm), download=False)
    assert ds.info.eps == 0.1 and len(ds.train) == 20


def test_idx_rejects_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 16)
    with pytest.raises(KdbenchError, match="not an IDX"):
        formats.read_idx(p)


def _cifar_python_dir(root, classes):
    rng = np.random.RandomState(1)
    if classes == 10:
        d = root / "cifar-10-batches-py"
        d.mkdir()
        names, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        d = root / "cifar-100-python"
        d.mkdir()
        names, key = ["train", "test"], b"fine_labels"
    truth = {}
    for name in names:
        x = rng.randint(0, 256, (4, 3072)).astype(np.uint8)
        y = list(rng.randint(0, classes, 4))
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x, key: y, b"batch_label": b"x"}, f, protocol=2)
        truth[name] = (x, y)
    return truth


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_python_batches(tmp_path, classes):
    truth = _cifar_python_dir(tmp_path, classes)
    ds = get_dataset(f"cifar{classes}", data_dir=str(tmp_path), download=False)
    assert ds.info.num_classes == classes and abs(ds.info.eps - 8 / 255) < 1e-12
    assert ds.info.augment.crop_padding == 4 and ds.info.augment.flip
    test_name = "test_batch" if classes == 10 else "test"
    x, y = truth[test_name]
    assert ds.test.x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(ds.test.x.numpy().reshape(4, -1), x)  # CHW row-major = CIFAR layout
    assert ds.test.y.tolist() == [int(v) for v in y]
    assert len(ds.train) == (20 if classes == 10 else 4)


def test_cifar_binary_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.RandomState(2)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = np.concatenate([rng.randint(0, 10, (3, 1)), rng.randint(0, 256, (3, 3072))], 1).astype(np.uint8)
        (d / name).write_bytes(rec.tobytes())
    ds = get_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert len(ds.train) == 15 and ds.test.x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.test.y.numpy(), rec[:, 0])
    np.testing.assert_array_equal(ds.test.x.numpy().reshape(3, -1), rec[:, 1:])


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/kdbench-pwned",))


def test_cifar_pickle_never_executes_code(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": _Boom(), b"labels": [0]}, f)
    with pytest.raises(KdbenchError, match="refusing to load global"):
        get_dataset("cifar10", data_dir=str(tmp_path), download=False)
    import os
    assert not os.path.exists("/tmp/kdbench-pwned")


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.RandomState(3)
    for split, n in (("train", 6), ("test", 5)):
        X = rng.randint(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = np.array([[10], [1], [2], [3], [4], [5]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
    ds = get_dataset("svhn", data_dir=str(tmp_path), download=False)
    assert ds.test.y.tolist() == [0, 1, 2, 3, 4]  # label 10 is digit 0
    assert ds.test.x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ds.test.x[2].numpy(), X[:, :, :, 2].transpose(2, 0, 1))


def _png(path, color, size):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i, w in enumerate(wnids):
        for j in range(2):
            _png(root / "train" / w / "images" / f"{w}_{j}.JPEG", (100 * i, 0, 0), 64)
    ann = []
    for k, w in enumerate(["n02", "n01", "n02"]):
        _png(root / "val" / "images" / f"val_{k}.JPEG", (0, 50 * k, 0), 64)
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann))
    ds = get_dataset("tiny-imagenet", data_dir=str(tmp_path), download=False)
    assert ds.info.num_classes == 200 and ds.info.input_size == 64
    assert ds.train.y.tolist() == [0, 0, 1, 1]
    assert ds.test.y.tolist() == [1, 0, 1]
    assert ds.test.x[2, 1, 0, 0].item() == 100 and ds.train.x[2, 0, 5, 5].item() == 100
    again = get_dataset("tiny-imagenet", data_dir=str(tmp_path), download=False)  # from the npz cache
    assert (root / "kdbench-cache.npz").exists() and torch.equal(again.test.x, ds.test.x)


def test_image_folder_spec(tmp_path):
    for split in ("train", "test"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            _png(tmp_path / split / c / "a.png", color, 16)
    ds = get_dataset(f"folder:{tmp_path}")
    assert ds.info.num_classes == 2 and ds.test.x.shape == (2, 3, 16, 16)
    assert ds.test.x[1, 2].float().mean().item() == 255


def test_npz_user_data_and_validation(tmp_path):
    x = np.random.RandomState(0).rand(6, 3, 4, 4).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    ds = get_dataset(f"npz:{tmp_path / 'ok.npz'}")
    assert ds.info.num_classes == 3 and ds.train is None
    assert torch.allclose(ds.test.images(), torch.tensor(x))
    bad = {"range": (x * 2, y), "nan": (np.where(x > 0.5, np.nan, x), y), "shape": (x[:, 0], y),
           "labels": (x, y[:3]), "nhwc": (x.transpose(0, 2, 3, 1), y)}
    msgs = {"range": "must lie in", "nan": "NaN", "shape": "4-d", "labels": "one per image", "nhwc": "NHWC"}
    for k, (xx, yy) in bad.items():
        np.savez(tmp_path / f"{k}.npz", x=xx, y=yy)
        with pytest.raises(KdbenchError, match=msgs[k]):
            get_dataset(f"npz:{tmp_path / (k + '.npz')}")
    with pytest.raises(KdbenchError, match="no training split"):
        ds.require_train()


def test_missing_data_names_path_and_url(tmp_path):
    with pytest.raises(KdbenchError) as e:
        get_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert "cifar-10-batches-py" in str(e.value) and "https://www.cs.toronto.edu" in str(e.value)


def test_offline_sets_fixed_splits():
    d = get_dataset("digits")
    assert (len(d.train), len(d.test)) == (1297, 500) and d.info.input_size == 8
    from sklearn.datasets import load_digits

    ref = load_digits()  # kdbench reads sklearn's file itself (no sklearn import): the same images
    perm = np.random.RandomState(0).permutation(1797)
    assert torch.equal(d.test.images(range(500)), torch.from_numpy(ref.images[perm[1297:]] / 16.0).float()[:, None])
    assert d.test.y.tolist() == ref.target[perm[1297:]].tolist()
    assert d.train.y.tolist() == ref.target[perm[:1297]].tolist()
    m = get_dataset("mnist5k")
    assert (len(m.train), len(m.test)) == (4000, 1000)
    assert torch.bincount(m.test.y).tolist() == [100] * 10


def test_eval_subset_is_seeded_and_hashed(digits):
    a, ha = digits.eval_indices(50, seed=3)
    b, hb = digits.eval_indices(50, seed=3)
    c, hc = digits.eval_indices(50, seed=4)
    assert torch.equal(a, b) and ha == hb and ha != hc
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 50
    full, _ = digits.eval_indices(None)
    assert torch.equal(full, torch.arange(500))


def test_augment_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    aug = Augment(crop_padding=1, flip=True)
    params = (torch.tensor([0, 1]), torch.tensor([2, 1]), torch.tensor([True, False]))
    out = aug.apply(x, params)
    # sample 0: offset (0, 2) in the padded image -> rows -1..2, cols 1..4 of x, then flipped
    padded = torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1))
    assert torch.equal(out[0, 0], padded[0:4, 2:6].flip(-1))
    assert torch.equal(out[1, 0], x[1, 0])  # offset (1, 1) is the identity crop, no flip


def test_shards_cover_every_index_once():
    full = shard_indices(10, torch.Generator().manual_seed(0))
    parts = [shard_indices(10, torch.Generator().manual_seed(0), r, 3) for r in range(3)]
    assert set(torch.cat(parts).tolist()) == set(range(10))  # 10 padded to 12: two repeats
    assert all(len(p) == 4 for p in parts)
    assert torch.equal(torch.stack(parts, 1).flatten()[:10], full)


def test_iterate_batches(digits):
    batches = list(iterate(digits.test, 128, torch.device("cpu")))
    assert [len(b[1]) for b in batches] == [128, 128, 128, 116]
    assert batches[0][0].dtype == torch.float32
