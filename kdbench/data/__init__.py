"""Data: the types (:mod:`.types`), on-disk format readers (:mod:`.formats`), the dataset
registry and loaders (:mod:`.datasets`, which lists the specs :func:`get_dataset` accepts),
batching (:mod:`.loader`) and augmentation (:mod:`.augment`)."""
from __future__ import annotations

from . import formats  # noqa: F401
from .augment import Augment  # noqa: F401
from .datasets import DATASETS, FASHION_MNIST_SYSTEM_DIR, default_data_dir, get_dataset  # noqa: F401
from .loader import epoch_generator, iterate, shard_indices  # noqa: F401
from .types import Dataset, DatasetInfo, ImageSet, index_hash  # noqa: F401
