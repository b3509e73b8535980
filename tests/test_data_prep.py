"""Tests for data_prep: official CIFAR archives, image folders, cache, lookup, CLI.

Synthetic archives are built in exactly the official layouts (member names, pickled dicts with
bytes keys, R/G/B planes) but with a few images; the expected counts are lowered through the
dataset spec. The network is never touched. Real-data tests use the CIFAR-10 JPEG copy in
``../shared/data`` (or $FASTSSL_DATA) and skip when it is absent.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep
from data_prep import DATASETS, DataError, Dataset, load_dataset
from data_prep import __main__ as cli
from data_prep import cache, download, readers
from data_prep.dataset import channel_stats

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("FASTSSL_DATA") or REPO.parent / "shared" / "data")
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
SMALL = {"cifar10": (20, 6), "cifar100": (30, 7)}  # (train, test) sizes of synthetic archives


# ----------------------------------------------------------------------------- fixtures/helpers

@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No user environment, a private default cache, and no network."""
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path / "default-cache"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)


@pytest.fixture
def small_specs(monkeypatch):
    """Official specs with the synthetic archives' sizes and no md5 (they are not official)."""
    for name, (n_train, n_test) in SMALL.items():
        spec = dataclasses.replace(DATASETS[name], train_size=n_train, test_size=n_test, md5=None)
        monkeypatch.setitem(DATASETS, name, spec)


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the official files are Python-2 pickles


def _planes(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> official (N, 3072) rows of R, G, B planes."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


def official_members(name: str, seed: int = 0) -> tuple[dict[str, bytes], Dataset]:
    """Official member files (name -> bytes) for a small synthetic dataset, and its truth."""
    rng = np.random.default_rng(seed)
    spec = DATASETS[name]
    n_train, n_test = SMALL[name]
    k = spec.num_classes
    classes = [f"class_{i:03d}" for i in range(k)] if name == "cifar100" else CIFAR10_CLASSES
    truth = Dataset(
        name,
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, k, n_train).astype(np.int64),
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, k, n_test).astype(np.int64),
        classes,
        source="synthetic",
    )
    members: dict[str, bytes] = {}

    def batch(x, y, label):
        d = {b"batch_label": label.encode(), b"data": _planes(x),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(x))]}
        if name == "cifar100":
            d[b"fine_labels"] = [int(v) for v in y]
            d[b"coarse_labels"] = [int(v) // 5 for v in y]  # differs from fine labels
        else:
            d[b"labels"] = [int(v) for v in y]
        return _pickle(d)

    if name == "cifar10":
        per = n_train // 5
        for i in range(5):
            sl = slice(i * per, (i + 1) * per)
            members[f"data_batch_{i + 1}"] = batch(
                truth.train_x[sl], truth.train_y[sl], f"training batch {i + 1} of 5")
        members["test_batch"] = batch(truth.test_x, truth.test_y, "testing batch 1 of 1")
        members["batches.meta"] = _pickle({
            b"label_names": [c.encode() for c in classes],
            b"num_cases_per_batch": per, b"num_vis": 3072})
    else:
        members["train"] = batch(truth.train_x, truth.train_y, "training batch 1 of 1")
        members["test"] = batch(truth.test_x, truth.test_y, "testing batch 1 of 1")
        members["meta"] = _pickle({
            b"fine_label_names": [c.encode() for c in classes],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]})
    return members, truth


def write_tar(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for member, blob in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def official_archive(folder: Path, name: str, filename: str | None = None, seed: int = 0):
    """A synthetic archive in the official layout (official file name by default)."""
    spec = DATASETS[name]
    members, truth = official_members(name, seed)
    files = {f"{spec.folder}/{m}": b for m, b in members.items()}
    files[f"{spec.folder}/readme.html"] = b"<html></html>"
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar(folder / (filename or spec.archive_name), files, dirs=(spec.folder,)), truth


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image_tree(classes=CIFAR10_CLASSES, per_class=(2, 1), seed=1, size=32):
    """{relative path: PNG bytes} of a train/test image-folder tree, and its truth (sorted order)."""
    rng = np.random.default_rng(seed)
    files, truth = {}, {"train": ([], []), "test": ([], [])}
    for split, n in zip(("train", "test"), per_class):
        for label, cls in enumerate(sorted(classes)):
            for j in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                files[f"{split}/{cls}/{j:04d}.png"] = png_bytes(img)
                truth[split][0].append(img)
                truth[split][1].append(label)
    return files, {s: (np.stack(x), np.array(y)) for s, (x, y) in truth.items()}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


def assert_same(ds: Dataset, truth: Dataset):
    np.testing.assert_array_equal(ds.train_x, truth.train_x)
    np.testing.assert_array_equal(ds.train_y, truth.train_y)
    np.testing.assert_array_equal(ds.test_x, truth.test_x)
    np.testing.assert_array_equal(ds.test_y, truth.test_y)
    assert ds.classes == truth.classes
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert ds.train_x.shape[1:] == (32, 32, 3) and ds.train_x.flags.c_contiguous


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# ----------------------------------------------------------------------------- official archives

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_archive_roundtrip(tmp_path, small_specs, name):
    path, truth = official_archive(tmp_path / "src", name)
    ds = readers.read_source(path, DATASETS[name], verbose=False)
    assert_same(ds, truth)
    assert ds.num_classes == DATASETS[name].num_classes
    # The plane layout by hand: byte c*1024 + r*32 + col of a row is pixel (r, col), channel c.
    rows = _planes(truth.train_x)
    for i, r, col, c in [(0, 0, 0, 0), (3, 5, 31, 2), (7, 31, 0, 1)]:
        assert ds.train_x[i, r, col, c] == rows[i, c * 1024 + r * 32 + col]


def test_cifar100_uses_fine_labels(tmp_path, small_specs):
    path, truth = official_archive(tmp_path, "cifar100")
    ds = readers.read_source(path, DATASETS["cifar100"], verbose=False)
    np.testing.assert_array_equal(ds.train_y, truth.train_y)
    assert not np.array_equal(ds.train_y, truth.train_y // 5)
    assert ds.num_classes == 100 and ds.classes[:2] == ["class_000", "class_001"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_extracted_official_folder(tmp_path, small_specs, name):
    spec = DATASETS[name]
    members, truth = official_members(name)
    folder = write_tree(tmp_path / "downloads" / spec.folder, members)
    assert_same(load_dataset(name, data=folder, cache_dir=tmp_path / "c", verbose=False), truth)
    # The parent folder is a container: the extracted folder is found inside it.
    ds = load_dataset(name, data=tmp_path / "downloads", cache_dir=tmp_path / "c2", verbose=False)
    assert_same(ds, truth)


def test_official_counts_enforced(tmp_path):
    path, _ = official_archive(tmp_path, "cifar10", filename="mine.tar.gz")
    with pytest.raises(DataError, match="train split has 20 images, expected 50000"):
        readers.read_source(path, DATASETS["cifar10"], verbose=False)
    ds = readers.read_source(path, DATASETS["cifar10"], verbose=False, expected_sizes=(20, 6))
    assert len(ds.train_x) == 20


def test_md5_checked_only_for_official_file_name(tmp_path):
    spec = DATASETS["cifar10"]  # real spec: official md5 and counts
    path, _ = official_archive(tmp_path, "cifar10")
    with pytest.raises(DataError, match="md5"):
        readers.read_source(path, spec, verbose=False, expected_sizes=(20, 6))
    # Same content under another name: judged by its contents only.
    renamed = path.rename(tmp_path / "cifar10-copy.tar.gz")
    assert len(readers.read_source(renamed, spec, verbose=False, expected_sizes=(20, 6)).test_x) == 6
    # And the flag turns the check off.
    back = renamed.rename(path)
    readers.read_source(back, spec, verbose=False, verify_md5=False, expected_sizes=(20, 6))


def test_wrong_official_archive_for_dataset(tmp_path, small_specs):
    path, _ = official_archive(tmp_path, "cifar100", filename="renamed.tar.gz")
    with pytest.raises(DataError, match="holds cifar100, not cifar10"):
        load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)


def test_unsafe_pickle_rejected(tmp_path, small_specs):
    members, _ = official_members("cifar10")
    members["batches.meta"] = b"cos\nsystem\n(S'echo pwned'\ntR."  # os.system: must not run
    path = write_tar(tmp_path / "x.tar", {f"cifar-10-batches-py/{m}": b for m, b in members.items()})
    with pytest.raises(DataError, match="x.tar.*os.system"):
        readers.read_source(path, DATASETS["cifar10"], verbose=False)


# ----------------------------------------------------------------------------- image folders

def test_image_folder_dir_and_tar(tmp_path, small_specs):
    files, truth = image_tree()
    root = write_tree(tmp_path / "tree", files)
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    spec = DATASETS["cifar10"]
    from_dir = readers.read_source(root, spec, verbose=False)
    np.testing.assert_array_equal(from_dir.train_x, truth["train"][0])
    np.testing.assert_array_equal(from_dir.train_y, truth["train"][1])
    np.testing.assert_array_equal(from_dir.test_x, truth["test"][0])
    np.testing.assert_array_equal(from_dir.test_y, truth["test"][1])
    assert from_dir.classes == CIFAR10_CLASSES  # sorted folder names
    # Same tree as .tar.gz under one top-level folder, members added in shuffled order.
    order = np.random.default_rng(0).permutation(len(files))
    names = list(files)
    tar_path = write_tar(tmp_path / "pngs.tar.gz", {f"top/{names[i]}": files[names[i]] for i in order})
    from_tar = readers.read_source(tar_path, spec, verbose=False)
    assert_same(from_tar, from_dir)
    # And a plain .tar without a top-level folder.
    assert_same(readers.read_source(write_tar(tmp_path / "flat.tar", files), spec, verbose=False), from_dir)


def test_image_folder_converts_modes(tmp_path, small_specs):
    files, truth = image_tree()
    gray = np.full((32, 32), 77, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    files["train/bird/0000.png"] = buf.getvalue()
    ds = readers.read_source(write_tree(tmp_path / "t", files), DATASETS["cifar10"], verbose=False)
    assert ds.train_x.shape == (20, 32, 32, 3)
    assert (ds.train_x[4] == 77).all()  # bird is class 2 -> images 4, 5


def test_image_folder_errors(tmp_path, small_specs):
    spec = DATASETS["cifar10"]
    files, _ = image_tree()
    big = dict(files)
    big["train/cat/0000.png"] = png_bytes(np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(DataError, match=r"train/cat/0000.png: image is 48x64, expected 32x32"):
        readers.read_source(write_tree(tmp_path / "big", big), spec, verbose=False)

    missing = {k: v for k, v in files.items() if not k.startswith("test/dog/")}
    with pytest.raises(DataError, match=r"only in train: \['dog'\]"):
        readers.read_source(write_tree(tmp_path / "miss", missing), spec, verbose=False)

    three, _ = image_tree(classes=["a", "b", "c"])
    with pytest.raises(DataError, match="found 3 class folders, cifar10 needs 10"):
        readers.read_source(write_tree(tmp_path / "three", three), spec, verbose=False)

    broken = dict(files)
    broken["test/frog/0000.png"] = b"not an image"
    with pytest.raises(DataError, match="test/frog/0000.png: cannot decode"):
        readers.read_source(write_tar(tmp_path / "broken.tar", broken), spec, verbose=False)

    empty = write_tree(tmp_path / "empty", {k: v for k, v in files.items() if "/ship/" not in k})
    (empty / "train" / "ship").mkdir()
    (empty / "test" / "ship").mkdir()
    with pytest.raises(DataError, match="no images in train/ship"):
        readers.read_source(empty, spec, verbose=False)


# ----------------------------------------------------------------------------- source lookup

def test_container_picks_matching_dataset(tmp_path, small_specs):
    downloads = tmp_path / "downloads"
    _, truth10 = official_archive(downloads, "cifar10", seed=10)
    _, truth100 = official_archive(downloads, "cifar100", seed=100)
    (downloads / "notes.txt").write_text("hello")
    assert_same(load_dataset("cifar10", data=downloads, cache_dir=tmp_path / "c", verbose=False), truth10)
    assert_same(load_dataset("cifar100", data=downloads, cache_dir=tmp_path / "c", verbose=False), truth100)


def test_container_uses_name_hint_then_class_count(tmp_path, small_specs):
    files10, truth10 = image_tree()
    box = tmp_path / "box"
    box.mkdir()
    write_tar(box / "my-images.tar.gz", files10)  # no dataset in the name: 10 classes inside
    ds = load_dataset("cifar10", data=box, cache_dir=tmp_path / "c", verbose=False)
    np.testing.assert_array_equal(ds.train_x, truth10["train"][0])
    write_tar(box / "CIFAR-10_png.tar", files10)  # name hint wins, no probing needed
    ds = load_dataset("cifar10", data=box, cache_dir=tmp_path / "c", verbose=False)
    assert ds.source.endswith("CIFAR-10_png.tar")
    with pytest.raises(DataError, match=r"no cifar100 source in .*box \(found: CIFAR-10_png.tar"):
        load_dataset("cifar100", data=box, cache_dir=tmp_path / "c", verbose=False)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file or directory: .*nope"):
        load_dataset("cifar10", data=tmp_path / "nope", cache_dir=tmp_path / "c", verbose=False)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad-pickle", "missing-member"])
def test_corrupt_archive(tmp_path, small_specs, damage):
    path, _ = official_archive(tmp_path / "src", "cifar10")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        members, _ = official_members("cifar10")
        if damage == "bad-pickle":
            members["data_batch_3"] = members["data_batch_3"][:100]
        else:
            del members["test_batch"]
        write_tar(path, {f"cifar-10-batches-py/{m}": b for m, b in members.items()})
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data=path, cache_dir=cache_dir, verbose=False)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if damage == "missing-member":
        assert "missing member cifar-10-batches-py/test_batch" in message
    assert files_under(cache_dir) == []


def test_offline_and_nothing_found(tmp_path, monkeypatch):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", cache_dir=tmp_path / "c", verbose=False)
    message = str(info.value)
    for needed in ("--data PATH", "FASTSSL_DATA=PATH", "internet", "network disabled"):
        assert needed in message
    with pytest.raises(DataError, match="downloading is disabled.*FASTSSL_DATA"):
        load_dataset("cifar100", cache_dir=tmp_path / "c", download=False, verbose=False)
    assert files_under(tmp_path / "c") == []


def test_download_verifies_md5_and_is_atomic(tmp_path, monkeypatch):
    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "11"}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"not cifar!!"))
    dest = tmp_path / "downloads" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="md5"):
        download.download_archive(DATASETS["cifar10"], dest, verbose=False)
    assert files_under(tmp_path) == []


def test_download_then_cached(tmp_path, small_specs, monkeypatch):
    calls = []

    def fake_download(spec, dest, verbose=True):
        calls.append(dest)
        official_archive(dest.parent, spec.name)
        return dest

    monkeypatch.setattr(download, "download_archive", fake_download)
    _, truth = official_members("cifar10")
    root = tmp_path / "c"
    assert_same(load_dataset("cifar10", cache_dir=root, verbose=False), truth)
    assert calls == [root / "downloads" / "cifar-10-python.tar.gz"]
    assert_same(load_dataset("cifar10", cache_dir=root, verbose=False), truth)  # newest cache
    assert len(calls) == 1


def test_env_data_and_fallthrough(tmp_path, small_specs, monkeypatch):
    path, truth = official_archive(tmp_path / "data", "cifar10")
    monkeypatch.setenv("FASTSSL_DATA", str(tmp_path / "data"))
    root = tmp_path / "c"
    assert_same(load_dataset("cifar10", cache_dir=root, verbose=False), truth)
    # No cifar100 in FASTSSL_DATA: the search goes on, and the final message says why.
    with pytest.raises(DataError, match=r"FASTSSL_DATA=.*has no cifar100 source.*--data PATH"):
        load_dataset("cifar100", cache_dir=root, verbose=False)
    monkeypatch.setenv("FASTSSL_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="FASTSSL_DATA=.*missing: no such file"):
        load_dataset("cifar10", cache_dir=root, verbose=False)


# ----------------------------------------------------------------------------- cache

def test_cache_hit_skips_source(tmp_path, small_specs, monkeypatch):
    src = tmp_path / "src"
    path, truth = official_archive(src, "cifar10")
    os.chmod(src, 0o555)  # the source folder may be read-only: nothing is written there
    try:
        first = load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
    finally:
        os.chmod(src, 0o755)
    assert [p.name for p in src.iterdir()] == [path.name]
    assert first.cache_path is not None and first.cache_path.parent == tmp_path / "c" / "cifar10"
    assert files_under(tmp_path / "c") == [first.cache_path]

    def must_not_read(*args, **kwargs):
        raise AssertionError("source read despite a valid cache")

    monkeypatch.setattr(readers, "read_source", must_not_read)
    second = load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
    assert_same(second, truth)
    assert second.source == first.source and second.cache_path == first.cache_path
    assert second.mean == pytest.approx(first.mean) and second.std == pytest.approx(first.std)
    # Without --data, the newest cache of the dataset is used.
    assert_same(load_dataset("cifar10", cache_dir=tmp_path / "c", verbose=False), truth)
    # A changed source (new mtime) is a cache miss.
    os.utime(path, ns=(1, 1))
    with pytest.raises(AssertionError, match="source read"):
        load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)


def test_cache_dir_from_environment(tmp_path, small_specs, monkeypatch):
    path, _ = official_archive(tmp_path / "src", "cifar10")
    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path / "env-cache"))
    ds = load_dataset("cifar10", data=path, verbose=False)
    assert ds.cache_path.parent == tmp_path / "env-cache" / "cifar10"


def test_corrupt_cache_is_rebuilt(tmp_path, small_specs):
    path, truth = official_archive(tmp_path / "src", "cifar10")
    first = load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
    blob = first.cache_path.read_bytes()
    first.cache_path.write_bytes(blob[: len(blob) // 2])
    again = load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
    assert_same(again, truth)
    assert again.cache_path.read_bytes() == blob
    # Flipped bytes inside the image array (zip CRC) are detected too.
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF
    first.cache_path.write_bytes(bytes(damaged))
    assert_same(load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False), truth)
    assert first.cache_path.read_bytes() == blob


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
def test_cache_write_is_atomic(tmp_path, small_specs, monkeypatch, failure):
    path, truth = official_archive(tmp_path / "src", "cifar10")

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise failure("disk full")

    monkeypatch.setattr(cache.np, "savez", half_write)
    if failure is OSError:  # reported, data still returned, no cache
        ds = load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
        assert_same(ds, truth)
        assert ds.cache_path is None
    else:
        with pytest.raises(KeyboardInterrupt):
            load_dataset("cifar10", data=path, cache_dir=tmp_path / "c", verbose=False)
    assert files_under(tmp_path / "c") == []


def test_mean_std_exact():
    x = np.random.default_rng(3).integers(0, 256, (2500, 32, 32, 3), dtype=np.uint8)
    mean, std = channel_stats(x, chunk=1000)  # several chunks, a partial last one
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-9)
    ds = Dataset("cifar10", x, np.zeros(len(x), np.int64), x[:5], np.zeros(5, np.int64),
                 CIFAR10_CLASSES, "memory")
    assert ds.mean == mean and isinstance(ds.mean[0], float) and ds.num_classes == 10


def test_public_api():
    assert set(data_prep.__all__) == {"load_dataset", "Dataset", "DataError", "DATASETS", "dataset_names"}
    assert sorted(DATASETS) == ["cifar10", "cifar100"]
    assert data_prep.dataset_names() == ("cifar10", "cifar100", "images")  # what --dataset offers
    assert "\n" not in str(DataError("two\nlines"))


# ----------------------------------------------------------------------------- CLI

def test_cli(tmp_path, small_specs, capsys):
    path, _ = official_archive(tmp_path / "src", "cifar100")
    args = ["--dataset", "cifar100", "--data", str(path), "--cache-dir", str(tmp_path / "c"), "-q"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "cifar100: 30 train / 7 test images, 100 classes" in out and str(tmp_path / "c") in out

    assert cli.main(["--data", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such file or directory") and err.count("\n") == 1

    with pytest.raises(SystemExit) as info:
        cli.main(["--dataset", "imagenet"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["--bogus"])
    assert info.value.code == 2


def test_cli_module_help():
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "default: cifar10" in result.stdout and "FASTSSL_DATA" in result.stdout
    assert "~/.cache/fastssl" in result.stdout


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory):
    """The real CIFAR-10 JPEG copy, decoded once per session into a private cache."""
    if not REAL_DATA.exists():
        pytest.skip(f"real data not available at {REAL_DATA}")
    cache_dir = tmp_path_factory.mktemp("real-cache")
    try:
        ds = load_dataset("cifar10", data=REAL_DATA, cache_dir=cache_dir, download=False, verbose=False)
    except data_prep.errors.SourceNotFound:
        pytest.skip(f"no CIFAR-10 in {REAL_DATA}")
    return ds, cache_dir


def test_real_cifar10(real_cifar10):
    ds, _ = real_cifar10
    assert (len(ds.train_x), len(ds.test_x)) == (50_000, 10_000)
    assert ds.classes == CIFAR10_CLASSES
    assert np.bincount(ds.train_y, minlength=10).tolist() == [5000] * 10
    assert np.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert ds.mean == pytest.approx((125.27, 122.93, 113.86), abs=0.5)
    assert ds.std == pytest.approx((62.53, 61.91, 66.46), abs=0.5)


def test_real_cifar10_cached_reload(real_cifar10, monkeypatch):
    ds, cache_dir = real_cifar10
    monkeypatch.setattr(readers, "read_source", lambda *a, **k: pytest.fail("source re-read"))
    again = load_dataset("cifar10", data=REAL_DATA, cache_dir=cache_dir, verbose=False)
    np.testing.assert_array_equal(again.test_x, ds.test_x)
    np.testing.assert_array_equal(again.train_y, ds.train_y)
    assert again.cache_path == ds.cache_path


def test_real_folder_has_no_cifar100(tmp_path):
    if not (REAL_DATA / "cifar10-jpeg-q75.tar.gz").exists():
        pytest.skip("real data not available")
    with pytest.raises(DataError, match="no cifar100 source.*cifar10-jpeg-q75.tar.gz"):
        load_dataset("cifar100", data=REAL_DATA, cache_dir=tmp_path, verbose=False)
