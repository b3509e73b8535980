#!/usr/bin/env python
"""Export a backbone.  Example: python scripts/export.py --ckpt runs/simclr-cifar10-resnet18 --to safetensors"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.eval_cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
