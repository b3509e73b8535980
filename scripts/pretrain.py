#!/usr/bin/env python
"""Self-supervised pretraining on CIFAR.  Example: python scripts/pretrain.py --method dare --fast"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
