"""``python -m data_prep``: load (and cache) a dataset, print a summary.

``--dataset images --data DIR_OR_TAR [--resolution R] [--strict]`` converts your own images.

The parser is built by :func:`build_parser` and the work done by :func:`prepare`, which returns
the loaded Dataset; ``--formats all`` (or a list) also converts it into the FFCV .beton and DALI
webdataset files (see data_prep/formats.py), idempotently, in the cache next to the arrays.
"""

from __future__ import annotations

import argparse
import sys

from .cache import CACHE_ENV
from .dataset import Dataset
from .errors import DataError
from .formats import DEFAULT_JPEG_QUALITY, FORMATS, SPLITS, ensure_formats
from .images import DEFAULT_RESOLUTION
from .load import DATA_ENV, dataset_names, load_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description=(
            "Find CIFAR-10/100 (official archive, extracted folder, image-folder tree or tar, or a "
            "folder containing them), or read your own images (--dataset images), validate them "
            "and cache canonical uint8 arrays."
        ),
    )
    parser.add_argument(
        "--dataset", choices=dataset_names(), default="cifar10",
        help="dataset to prepare (default: %(default)s); 'images': your own folder or tar archive "
        "of images, given with --data",
    )
    parser.add_argument(
        "--data", metavar="PATH", default=None,
        help=f"where the data is (default: ${DATA_ENV}, else the newest cache, else download); "
        "for --dataset images: your folder or tar archive of images (required)",
    )
    parser.add_argument(
        "--resolution", metavar="PX", type=_resolution, default=DEFAULT_RESOLUTION,
        help="--dataset images: resize the shorter side to PX and centre-crop to PX x PX "
        "(CIFAR is always 32; default: %(default)s)",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="--dataset images: stop with an error naming image files that cannot be decoded "
        "(default: skip them with a warning)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", default=None,
        help=f"cache directory (default: ${CACHE_ENV}, else ~/.cache/fastssl)",
    )
    parser.add_argument(
        "--no-download", action="store_true",
        help="never download; fail if the data is not found locally (default: download if needed)",
    )
    parser.add_argument(
        "--formats", metavar="LIST", default=None,
        help=f"also convert to these formats: all, or a comma-separated list of {', '.join(FORMATS)} "
        "(default: none, only the canonical arrays)",
    )
    parser.add_argument(
        "--jpeg-quality", metavar="Q", type=int, default=DEFAULT_JPEG_QUALITY,
        help="JPEG quality of the ffcv-jpg and dali formats (default: %(default)s)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or notes (default: off)"
    )
    return parser


def _resolution(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels in 1..4096, got {text!r}")
    return value


def prepare(args: argparse.Namespace) -> Dataset:
    """Load (reading and caching on first use) the dataset the arguments describe."""
    return load_dataset(
        args.dataset,
        data=args.data,
        cache_dir=args.cache_dir,
        download=not args.no_download,
        verbose=not args.quiet,
        resolution=args.resolution,
        strict=args.strict,
    )


def convert(ds: Dataset, args: argparse.Namespace) -> dict:
    """Write (or find up to date) every format asked for by ``--formats``, both splits."""
    splits = SPLITS if ds.labeled else ("train",)  # unlabelled images have no test split
    return ensure_formats(ds, args.formats, splits=splits, cache_dir=args.cache_dir,
                          jpeg_quality=args.jpeg_quality, verbose=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ds = prepare(args)
        paths = convert(ds, args) if args.formats else {}
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ds.summary())
    for (fmt, split), path in paths.items():
        print(f"  {fmt + ' ' + split + ':':16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
