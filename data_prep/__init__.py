"""Data preparation for fastssl: CIFAR-10/100 and your own images.

Reads CIFAR-10/100 from the official python archives or from image-folder trees (directories or
tar archives of JPEG/PNG files), validates it, and caches canonical arrays: uint8 (N, 32, 32, 3)
RGB images and int64 labels. Typical use::

    from data_prep import load_dataset, DataError
    ds = load_dataset("cifar10", data="/path/to/cifar-10-python.tar.gz")
    ds.train_x, ds.train_y, ds.classes, ds.mean, ds.std

Your own images (any size and common format, a folder or a tar; see data_prep/images.py)::

    ds = load_dataset("images", "/path/to/photos", resolution=32, strict=False)
    ds.labeled  # False without class sub-folders: train_y all -1, empty test split

Command line: ``python -m data_prep --dataset cifar10 --data PATH`` or
``python -m data_prep --dataset images --data DIR_OR_TAR [--resolution R] [--strict]``.
"""

from .dataset import Dataset
from .errors import DataError
from .load import dataset_names, load_dataset
from .specs import DATASETS

__all__ = ["DATASETS", "DataError", "Dataset", "dataset_names", "load_dataset"]
