"""Datasets (a registry): every dataset yields unnormalised images in [0, 1] (NCHW), knows its
class count, its default L-inf budget and its train augmentation, and gives deterministic
evaluation subsets whose index hash is recorded.

Specs accepted by :func:`get_dataset`: a registered name (``digits``, ``mnist5k``,
``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``tiny-imagenet``),
``npz:PATH`` for user data and ``folder:PATH`` for an ImageFolder tree with ``train/`` and
``test/`` (or ``val/``) sub-folders.
"""
from __future__ import annotations

from . import formats  # noqa: F401
from .augment import Augment  # noqa: F401
from .datasets import DATASETS, FASHION_MNIST_SYSTEM_DIR, default_data_dir, get_dataset  # noqa: F401
from .loader import epoch_generator, iterate, shard_indices  # noqa: F401
from .types import Dataset, DatasetInfo, ImageSet, index_hash  # noqa: F401
