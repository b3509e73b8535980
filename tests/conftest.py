"""Shared fixtures: a tiny learnable image-folder dataset, a private cache dir, the real data path."""
import os

# numba (FFCV's parallel kernels) picks the TBB threading layer when a system libtbb exists (Debian's OpenCV
# pulls it in), and its at-exit unload_tbb() was seen to hang forever after the whole suite had passed
# (a pytest process sleeping in tbb::task_group::wait at interpreter shutdown). The OpenMP layer has no
# such hook; it must be chosen before numba starts its first parallel kernel.
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shared_data() -> Path | None:
    """../shared/data beside the checkout (or $FASTSSL_DATA); None when absent."""
    env = os.environ.get("FASTSSL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if (path / "cifar10-jpeg-q75.tar.gz").is_file() else None


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets a cache dir of its own: nothing is read from or written to ~/.cache."""
    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def float64():
    """float64 as the default dtype for exact comparisons, restored afterwards (it is global state)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_image_folder(root: Path, per_class_train: int = 8, per_class_test: int = 4, seed: int = 0) -> Path:
    """10 classes of 32x32 PNGs whose colour and stripe orientation depend on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.array([25 * c, 255 - 25 * c, 128 + (-1) ** c * 60], dtype=np.float64)
                stripes = np.sin(np.arange(32) * (c + 1) / 3.0)[:, None] * 40
                img = base + (stripes if c % 2 else stripes.T)[..., None] + rng.normal(0, 20, (32, 32, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny_cifar"))
