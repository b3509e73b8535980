#!/usr/bin/env python
"""Compare pretraining runs.  Example: python scripts/compare_runs.py runs/simclr-cifar10-resnet18 runs/dare-cifar10-resnet18"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
