"""``python -m data_prep``: load (and cache) a dataset, print a summary.

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
from .formats import DEFAULT_JPEG_QUALITY, FORMATS, ensure_formats
from .load import DATA_ENV, load_dataset
from .specs import DATASETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description=(
            "Find CIFAR-10/100 (official archive, extracted folder, image-folder tree or tar, or a "
            "folder containing them), validate it and cache canonical uint8 arrays."
        ),
    )
    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), default="cifar10",
        help="dataset to prepare (default: %(default)s)",
    )
    parser.add_argument(
        "--data", metavar="PATH", default=None,
        help=f"where the data is (default: ${DATA_ENV}, else the newest cache, else download)",
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


def prepare(args: argparse.Namespace) -> Dataset:
    """Load (reading and caching on first use) the dataset the arguments describe."""
    return load_dataset(
        args.dataset,
        data=args.data,
        cache_dir=args.cache_dir,
        download=not args.no_download,
        verbose=not args.quiet,
    )


def convert(ds: Dataset, args: argparse.Namespace) -> dict:
    """Write (or find up to date) every format asked for by ``--formats``, both splits."""
    return ensure_formats(ds, args.formats, cache_dir=args.cache_dir, jpeg_quality=args.jpeg_quality,
                          verbose=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ds = prepare(args)
        paths = convert(ds, args) if args.formats else {}
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(ds.summary())
    for (fmt, split), path in paths.items():
        print(f"  {fmt + ' ' + split + ':':16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
