"""Loaders (CPU): the contract (shapes, dtypes, device, layout), every index once per epoch, the same
epoch order everywhere, determinism, a clean stop mid-epoch, augmentation statistics that agree
across loaders, a clear message when a package is missing, and a short training run with each.
FFCV and DALI cases skip when the package is not installed."""
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_prep.dataset import Dataset
from fastssl.augment import AugmentPolicy, TwoViewAugment, policy_pair
from fastssl.cli import main
from fastssl.loaders import LOADERS, MissingPackage, UnsupportedOption, build_loader, make_loader

# Loader variants: (name, options, package needed).
SPECS = {
    "resident": ("resident", {}, None),
    "torch": ("torch", {"workers": 2}, None),
    "ffcv": ("ffcv", {}, "ffcv"),
    "ffcv-crops": ("ffcv", {"crops": "ffcv"}, "ffcv"),
    "ffcv-jpg": ("ffcv", {"mode": "jpg"}, "ffcv"),
    "dali": ("dali", {}, "nvidia.dali"),
}
N, BATCH = 200, 64  # 200 = 3 * 64 + 8: a partial last batch

# Stated tolerances for statistics over 2 epochs x 512 images x 2 views (normalised units, see below).
CROP_SCALE_MEAN_TOL = 0.04   # |mean crop area fraction - resident's|; its sampling s.e. is ~0.006
FLIP_RATE_TOL = 0.06         # |flip rate - 0.5| (s.e. 0.011)
CHANNEL_MEAN_TOL = 0.12      # per channel and view, |mean - resident's| (s.e. of a difference ~0.04)
CHANNEL_STD_TOL = 0.08       # per channel and view, |std - resident's|


def spec(key):
    name, opts, package = SPECS[key]
    if package:
        pytest.importorskip(package)
    return name, dict(opts)


def dataset(images: np.ndarray) -> Dataset:
    n = len(images)
    labels = np.arange(n, dtype=np.int64)  # label = index: coverage is visible in the labels
    return Dataset("cifar10", images, labels, images[:8], labels[:8], [str(i) for i in range(n)], "synthetic")


def ramps(n: int) -> np.ndarray:
    """R = 8 x + 4, G = 8 y + 4: a view's R/G range gives its crop box, its R slope the flip."""
    yy, xx = np.mgrid[0:32, 0:32]
    ramp = np.stack([xx * 8 + 4, yy * 8 + 4, np.full_like(xx, 128)], -1).astype(np.uint8)
    return np.repeat(ramp[None], n, 0)


def photo_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3))
    for i in range(n):
        c, d = rng.uniform(40, 215, 3), rng.uniform(-3, 3, (2, 3))
        out[i] = c + xx[..., None] * d[0] + yy[..., None] * d[1] + 30 * np.sin(xx[..., None] / rng.uniform(2, 6) + rng.uniform(0, 6, 3))
    return out.clip(0, 255).astype(np.uint8)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """On a shared 2-core machine, multi-threaded small CPU ops can be 100x slower than one thread
    when the other core is busy; the loaders' own workers provide the parallelism here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: formats are converted once per dataset."""
    return tmp_path_factory.mktemp("loader-cache")


@pytest.fixture(scope="module")
def small():
    return dataset(photo_like(N))


def loader(key, ds, cache, aug=None, indices=None, drop_last=True, batch=BATCH, seed=3):
    name, opts = spec(key)
    aug = aug or TwoViewAugment(*policy_pair("default"), ds.mean, ds.std)
    return make_loader(name, ds, indices, batch, aug, "cpu", seed=seed, drop_last=drop_last, cache_dir=cache,
                       verbose=False, **opts)


def run_epoch(ld, epoch):
    ld.set_epoch(epoch)
    return [([v.clone() for v in views], y.clone()) for views, y in ld]


def test_loader_names():
    assert LOADERS == ("resident", "ffcv", "dali", "torch")


@pytest.mark.parametrize("key", list(SPECS))
def test_contract_coverage_order_determinism(key, small, cache):
    ld = loader(key, small, cache)
    assert len(ld) == N // BATCH
    out = run_epoch(ld, 0)
    assert len(out) == N // BATCH
    for views, y in out:
        assert isinstance(views, list) and len(views) == 2
        for v in views:
            assert v.shape == (BATCH, 3, 32, 32) and v.dtype == torch.float32 and v.device.type == "cpu"
            assert v.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(v).all()
        assert y.shape == (BATCH,) and y.dtype == torch.int64
        assert not torch.equal(views[0], views[1])
    seen = torch.cat([y for _, y in out])
    assert len(set(seen.tolist())) == len(seen) == (N // BATCH) * BATCH  # no duplicates; drop_last drops 8
    # The epoch order is the same permutation for every loader (that of the resident loader).
    ref = loader("resident", small, cache)
    assert torch.equal(seen, torch.cat([y for _, y in run_epoch(ref, 0)]))
    # Another epoch, another order; the same epoch again, the same batches (views included).
    again = run_epoch(ld, 1)
    assert not torch.equal(seen, torch.cat([y for _, y in again]))
    for (a, ay), (b, by) in zip(again, run_epoch(ld, 1)):
        assert torch.equal(ay, by) and all(torch.equal(u, v) for u, v in zip(a, b))
    # Batches kept from earlier steps are not overwritten by later ones (FFCV reuses buffers).
    kept = [(views[0], y) for views, y in ld]
    assert all(torch.equal(k[1], o[1]) for k, o in zip(kept, again))
    assert all(torch.equal(k[0], o[0][0]) for k, o in zip(kept, again))


@pytest.mark.parametrize("key", list(SPECS))
def test_no_drop_last_subset_and_stop_mid_epoch(key, small, cache):
    subset = np.arange(0, N, 2)[:90]  # 90 = 64 + 26
    ld = loader(key, small, cache, indices=subset, drop_last=False)
    assert len(ld) == 2
    # Stop after one batch (the loader must shut down cleanly), then a full epoch.
    for _ in ld:
        break
    out = run_epoch(ld, 0)
    assert [len(y) for _, y in out] == [64, 26]
    assert sorted(torch.cat([y for _, y in out]).tolist()) == subset.tolist()


def geometry_stats(views):
    """Crop area fraction and flip of each view of the ramp images (colour ops off)."""
    x = torch.cat(views) * 64 + 128  # un-normalise (mean 128, std 64)
    r, g = x[:, 0], x[:, 1]
    w = (r.amax((1, 2)) - r.amin((1, 2))) / 8 + 1
    h = (g.amax((1, 2)) - g.amin((1, 2))) / 8 + 1
    flipped = (r[:, :, -1] - r[:, :, 0]).mean(1) < 0
    return w * h / 1024, flipped.float()


@pytest.fixture(scope="module")
def reference_stats(cache):
    return {"geometry": _geometry(("resident",), cache), "colour": _colour("resident", cache)}


def _views(key, ds, aug, cache):
    ld = loader(key, ds, cache, aug=aug, batch=128, seed=1)
    views = [[], []]
    for epoch in range(2):
        for (v1, v2), _ in run_epoch(ld, epoch):
            views[0].append(v1)
            views[1].append(v2)
    return views


def _geometry(key, cache):
    geo = AugmentPolicy(jitter_p=0.0, gray_p=0.0)
    views = _views(key[0], dataset(ramps(512)), TwoViewAugment(geo, geo, (128.0,) * 3, (64.0,) * 3), cache)
    return geometry_stats(views[0] + views[1])


def _colour(key, cache):
    ds = dataset(photo_like(512, seed=1))
    out = {}
    for name in ("default", "asymmetric"):
        views = _views(key, ds, TwoViewAugment(*policy_pair(name), ds.mean, ds.std), cache)
        out[name] = [(torch.cat(v).mean((0, 2, 3)), torch.cat(v).std((0, 2, 3))) for v in views]
    return out


@pytest.mark.parametrize("key", [k for k in SPECS if k != "resident"])
def test_augmentation_statistics_agree(key, cache, reference_stats):
    spec(key)
    scale, flip = _geometry((key,), cache)
    ref_scale, ref_flip = reference_stats["geometry"]
    assert len(scale) == len(ref_scale) == 2048
    assert abs(scale.mean() - ref_scale.mean()) < CROP_SCALE_MEAN_TOL
    q = torch.tensor([0.1, 0.5, 0.9])
    assert (scale.quantile(q) - ref_scale.quantile(q)).abs().max() < 2 * CROP_SCALE_MEAN_TOL
    assert 0.07 <= scale.min() and scale.max() <= 1.05  # JPEG noise blurs the estimate a little
    assert abs(flip.mean() - 0.5) < FLIP_RATE_TOL and abs(ref_flip.mean() - 0.5) < FLIP_RATE_TOL
    colour = _colour(key, cache)
    for name, views in colour.items():
        for (mean, std), (ref_mean, ref_std) in zip(views, reference_stats["colour"][name]):
            assert (mean - ref_mean).abs().max() < CHANNEL_MEAN_TOL, (name, mean, ref_mean)
            assert (std - ref_std).abs().max() < CHANNEL_STD_TOL, (name, std, ref_std)
    # Solarisation (asymmetric view 2) visibly darkens: every loader implements it.
    (m1, _), (m2, _) = colour["asymmetric"]
    assert (m2 - m1).mean() < -0.05


# ------------------------------------------------------------------ multi-crop and progressive resolution

def multicrop(ds, k=2, local_size=8):
    return TwoViewAugment(*policy_pair("default"), ds.mean, ds.std, local_crops=k, local_size=local_size)


def first_batch(ld):
    for views, y in ld:
        return views, y


@pytest.mark.parametrize("key", ["resident", "torch", "ffcv"])
def test_multicrop_views_and_global_size(key, small, cache):
    ld = loader(key, small, cache, aug=multicrop(small), batch=32, indices=np.arange(96))
    ld.set_epoch(0)
    for px in (16, 24, 32, None):
        ld.set_global_size(px)
        views, y = first_batch(ld)
        side = px or 32
        assert [tuple(v.shape) for v in views] == [(32, 3, side, side)] * 2 + [(32, 3, 8, 8)] * 2
        assert all(v.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(v).all() for v in views)
        assert not torch.equal(views[2], views[3]) and y.shape == (32,)
    # The same (seed, epoch), the same views, local crops included.
    a, b = run_epoch(ld, 1), run_epoch(ld, 1)
    assert all(torch.equal(u, v) for (x, _), (z, _) in zip(a, b) for u, v in zip(x, z))


@pytest.mark.parametrize("key", ["resident", "torch"])
def test_set_global_size_takes_effect_at_the_next_batch(key, small, cache):
    """Switching mid-epoch gives, from the next batch on, exactly the views of a run at that size
    (the torch loader re-renders the batches its workers had prefetched at the old size)."""
    fixed = loader(key, small, cache, aug=multicrop(small, k=1), batch=16)
    fixed.set_global_size(16)
    ref = run_epoch(fixed, 0)
    ld = loader(key, small, cache, aug=multicrop(small, k=1), batch=16)
    rerendered = []
    if key == "torch":
        real = ld.dataset.views
        ld.dataset.views = lambda *a, **kw: rerendered.append(a[0]) or real(*a, **kw)  # counts main-process calls
    ld.set_epoch(0)
    out = []
    for i, (views, y) in enumerate(ld):
        out.append((views, y))
        if i == 0:
            ld.set_global_size(16)
    assert out[0][0][0].shape[-1] == 32 and len(out) == len(ref) == N // 16
    for (a, ay), (b, by) in zip(out[1:], ref[1:]):
        assert torch.equal(ay, by) and [v.shape[-1] for v in a] == [16, 16, 8]
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert key != "torch" or len(rerendered) > 0  # the prefetched batches were really re-rendered


@pytest.mark.parametrize("key", ["resident", "torch"])
def test_multicrop_shards_are_rows_of_the_global_batch(key, small, cache):
    name, opts = spec(key)
    aug = multicrop(small, k=2)

    def make(rank, world):
        return make_loader(name, small, np.arange(96), 32, aug, "cpu", seed=4, cache_dir=cache, verbose=False,
                           rank=rank, world=world, **opts)

    single, shards = run_epoch(make(0, 1), 0), [run_epoch(make(r, 2), 0) for r in range(2)]
    assert len(single) == 3
    for step, (views, y) in enumerate(single):
        parts = [s[step] for s in shards]
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        for j in range(4):
            torch.testing.assert_close(torch.cat([p[0][j] for p in parts]), views[j], rtol=0, atol=1e-6)


@pytest.mark.parametrize("key,what", [("dali", "--loader dali"), ("ffcv-crops", "FFCV-side crops")])
def test_loaders_without_multicrop_refuse_clearly(key, what, small, cache):
    with pytest.raises(UnsupportedOption, match=f"{what} cannot make local crops.*use --loader resident"):
        loader(key, small, cache, aug=multicrop(small))
    ld = loader(key, small, cache)
    ld.set_global_size(32)  # the dataset's resolution (and None) are fine
    ld.set_global_size(None)
    with pytest.raises(UnsupportedOption, match=f"{what} renders global views at the dataset's 32 px only, not 16 px"):
        ld.set_global_size(16)


def test_build_loader_reads_the_multicrop_config(small):
    base = dict(loader="resident", batch_size=32, seed=0, progress=False)
    aug = TwoViewAugment(*policy_pair("default"), small.mean, small.std)
    views, _ = first_batch(build_loader(SimpleNamespace(**base), small, None, aug, "cpu"))
    assert len(views) == 2  # a Config without the multi-crop fields: no local crops
    cfg = SimpleNamespace(**base, local_crops=3, local_size=12, local_scale=[0.1, 0.2])
    ld = build_loader(cfg, small, None, aug, "cpu")
    assert ld.augment.local_scale == (0.1, 0.2) and aug.local_crops == 0  # the caller's augmenter is untouched
    views, _ = first_batch(ld)
    assert [v.shape[-1] for v in views] == [32, 32, 12, 12, 12]


@pytest.mark.parametrize("key,module,extra", [("ffcv", "ffcv.loader", "ffcv"), ("dali", "nvidia.dali", "dali")])
def test_missing_package_is_a_clear_error(key, module, extra, small, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingPackage, match=rf"pip install 'fastssl\[{extra}\]'"):
        make_loader(key, small, None, BATCH, TwoViewAugment(*policy_pair("default"), small.mean, small.std), "cpu",
                    cache_dir=cache, verbose=False)


def test_unknown_loader(small):
    with pytest.raises(ValueError, match="resident, ffcv, dali, torch"):
        make_loader("nope", small, None, BATCH, None, "cpu")


@pytest.mark.parametrize("name", ["torch", "ffcv", "dali"])
def test_short_training_run(name, tmp_path, tiny_folder):
    if name != "torch":
        pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[name])
    out = tmp_path / name
    code = main(["--method", "simclr", "--data", str(tiny_folder), "--out", str(out), "--loader", name,
                 "--width", "8", "--batch-size", "16", "--proj-hidden", "32", "--proj-dim", "16", "--knn-k", "10",
                 "--device", "cpu", "--no-progress", "--epochs", "1", "--no-linear-eval"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["loader"] == name and summary["steps"] == 80 // 16
    assert summary["knn_top1"] is not None


NUMBA_CHILD = """
import os
import numba, numpy as np
import fastssl.loaders.ffcv_loader as ffcv_loader
chosen = os.environ.get("NUMBA_THREADING_LAYER")  # before numba's first parallel kernel
from data_prep.formats import MissingPackage
try:
    ffcv_loader._ffcv()  # FFCV's own imports and numba kernels, where it is installed
except MissingPackage:
    pass
@numba.njit(parallel=True)
def total(x):
    s = 0.0
    for i in numba.prange(x.shape[0]):
        s += x[i]
    return s
print(total(np.ones(4096)), chosen, numba.threading_layer())
"""


@pytest.mark.parametrize("user_layer", [None, "workqueue"])
def test_a_process_using_the_ffcv_loader_exits_cleanly_on_openmp(user_layer, tmp_path):
    """Importing the FFCV loader chooses numba's OpenMP threading layer (TBB's at-exit unload can hang the
    process); a layer the user set is kept. The child must finish its parallel kernel and exit with code 0."""
    pytest.importorskip("numba")
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}  # conftest sets it for the tests
    if user_layer:
        env["NUMBA_THREADING_LAYER"] = user_layer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", NUMBA_CHILD], env=env, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["4096.0", user_layer or "omp", user_layer or "omp"]
