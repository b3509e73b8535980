"""What each supported dataset looks like: official archive, URL, checksum, member files.

``DATASETS`` maps a dataset name to its :class:`DatasetSpec`. Readers take the spec as an
argument (never a global), so tests can build a spec with tiny expected sizes and no checksum
with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError

_TORONTO = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset and of its official python-pickle archive."""

    name: str  # "cifar10" / "cifar100"
    num_classes: int
    archive_name: str  # official tarball file name
    url: str
    md5: str | None  # md5 of the official tarball; None disables the check
    folder: str  # top-level folder inside the official tarball
    train_files: tuple[str, ...]  # pickled batches inside ``folder``
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str  # label entry of each batch dict (fine labels for CIFAR-100)
    names_key: str  # class-name entry of the meta dict
    train_size: int = 50_000  # image counts the official archive must have
    test_size: int = 10_000

    @property
    def member_files(self) -> tuple[str, ...]:
        """All files of the official layout (relative to ``folder``)."""
        return (*self.train_files, *self.test_files, self.meta_file)


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        archive_name="cifar-10-python.tar.gz",
        url=_TORONTO + "cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        archive_name="cifar-100-python.tar.gz",
        url=_TORONTO + "cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec for ``name``, or a DataError listing the known datasets."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r} (choose from {', '.join(sorted(DATASETS))})"
        ) from None


def name_hint(filename: str) -> str | None:
    """Dataset named in a file name ("cifar10-jpeg.tar.gz" -> "cifar10"), longest name first."""
    squashed = "".join(ch for ch in filename.lower() if ch.isalnum())
    for name in sorted(DATASETS, key=len, reverse=True):
        if name in squashed:
            return name
    return None
