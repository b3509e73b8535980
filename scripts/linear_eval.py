#!/usr/bin/env python
"""Linear probe of a pretrained backbone.  Example: python scripts/linear_eval.py --ckpt runs/dare-cifar10-resnet18/checkpoint.pt"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.cli import linear_eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(linear_eval_main(sys.argv[1:]))
