#!/usr/bin/env python
"""kNN (k = 20, 200) and linear evaluation of a pretrained backbone.  Example: python scripts/linear_eval.py --ckpt runs/simclr-cifar10-resnet18 --protocol standard"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.eval_cli import linear_eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(linear_eval_main(sys.argv[1:]))
