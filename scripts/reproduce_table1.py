#!/usr/bin/env python
"""Reproduce the paper's Table 1 grid.  Example: python scripts/reproduce_table1.py --budget smoke --methods simclr"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastssl.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
