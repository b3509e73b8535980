#!/usr/bin/env python
"""Fine-tuning / semi-supervised evaluation.  Example: python scripts/finetune.py --ckpt runs/simclr-cifar10-resnet18 --labels-fraction 0.1"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.eval_cli import finetune_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(finetune_main(sys.argv[1:]))
