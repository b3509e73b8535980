"""data_prep formats: FFCV .beton (raw exact, JPEG within a stated error), the DALI webdataset tar,
idempotent atomic conversion, the command line. FFCV/DALI parts skip without the packages."""
import io
import json
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep import DataError
from data_prep.__main__ import main
from data_prep.dataset import Dataset
from data_prep.formats import (
    FORMATS, MissingPackage, ensure_formats, formats_dir, parse_formats, read_dali_index, write_dali_tar,
)

# Stated JPEG errors (grey levels, 0-255), on smooth, photo-like 32x32 images at quality 90:
JPEG_MEAN_ABS_ERROR = 3.0   # mean |decoded - original| over all pixels
JPEG_P99_ABS_ERROR = 16     # 99th percentile of |decoded - original|


def photo_like(n: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a sinusoid and mild noise: JPEG behaves as on real photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3))
    for i in range(n):
        c, d = rng.uniform(40, 215, 3), rng.uniform(-3, 3, (2, 3))
        wave = 30 * np.sin(xx[..., None] / rng.uniform(2, 6) + rng.uniform(0, 6, 3))
        out[i] = c + xx[..., None] * d[0] + yy[..., None] * d[1] + wave + rng.normal(0, 3, (32, 32, 3))
    return out.clip(0, 255).astype(np.uint8)


def make_ds(n_train=96, n_test=32, name="cifar10") -> Dataset:
    x = photo_like(n_train + n_test)
    y = np.arange(n_train + n_test, dtype=np.int64) % 10
    return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:], [str(i) for i in range(10)], "synthetic")


def check_jpeg_error(decoded: np.ndarray, original: np.ndarray) -> None:
    err = np.abs(decoded.astype(np.int16) - original.astype(np.int16))
    assert err.mean() <= JPEG_MEAN_ABS_ERROR, err.mean()
    assert np.percentile(err, 99) <= JPEG_P99_ABS_ERROR, np.percentile(err, 99)


# ------------------------------------------------------------------ DALI webdataset tar (no DALI needed)


def test_dali_tar_round_trip(tmp_path):
    ds = make_ds()
    tar_path, idx_path = tmp_path / "d.tar", tmp_path / "d.idx.npz"
    write_dali_tar(tar_path, idx_path, ds.train_x, ds.train_y, verbose=False)
    index = read_dali_index(idx_path)
    np.testing.assert_array_equal(index["labels"], ds.train_y)
    raw = tar_path.read_bytes()
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert names[:4] == ["000000.jpg", "000000.cls", "000001.jpg", "000001.cls"] and len(names) == 2 * len(ds.train_y)
        decoded = []
        for i in range(len(ds.train_y)):
            jpg = tar.extractfile(f"{i:06d}.jpg").read()
            assert int(tar.extractfile(f"{i:06d}.cls").read()) == ds.train_y[i]
            o, s = index["offsets"][i], index["sizes"][i]
            assert raw[o:o + s] == jpg  # the index points at exactly the member's bytes
            decoded.append(np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))
    check_jpeg_error(np.stack(decoded), ds.train_x)
    # byte-for-byte reproducible
    write_dali_tar(tmp_path / "e.tar", tmp_path / "e.idx.npz", ds.train_x, ds.train_y, verbose=False)
    assert (tmp_path / "e.tar").read_bytes() == raw


def test_ensure_formats_idempotent_atomic_and_in_cache(tmp_path, monkeypatch):
    ds = make_ds()
    cache = tmp_path / "cache"
    paths = ensure_formats(ds, "dali", cache_dir=cache, verbose=False)
    folder = formats_dir(ds, cache)
    assert set(paths) == {("dali", "train"), ("dali", "test")}
    assert all(p.parent == folder and str(p).startswith(str(cache)) for p in paths.values())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dali-train"]["params"]["images"] == 96
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert not [p for p in stamps if p.name.endswith(".tmp")]

    # Second run: nothing is rewritten.
    calls = []
    monkeypatch.setattr("data_prep.formats.write_dali_tar", lambda *a, **k: calls.append(a))
    ensure_formats(ds, "dali", cache_dir=cache, verbose=False)
    assert calls == [] and {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    monkeypatch.undo()

    # A truncated output is noticed and rebuilt.
    tar = paths[("dali", "train")]
    good = tar.read_bytes()
    tar.write_bytes(good[:1000])
    ensure_formats(ds, "dali", cache_dir=cache, verbose=False)
    assert tar.read_bytes() == good

    # Other data -> another folder; other JPEG quality -> rebuilt.
    other = make_ds(n_train=64)
    assert formats_dir(other, cache) != folder
    sizes = read_dali_index(tar.with_suffix(".idx.npz"))["sizes"].sum()
    ensure_formats(ds, "dali", splits=("train",), cache_dir=cache, jpeg_quality=50, verbose=False)
    assert read_dali_index(tar.with_suffix(".idx.npz"))["sizes"].sum() < sizes


def test_bad_input_is_a_clear_error(tmp_path):
    ds = make_ds()
    bad = Dataset("cifar10", ds.train_x.astype(np.float32), ds.train_y, ds.test_x, ds.test_y, ds.classes, "x")
    with pytest.raises(DataError, match="uint8"):
        ensure_formats(bad, "dali", cache_dir=tmp_path, verbose=False)
    with pytest.raises(DataError, match="unknown format"):
        parse_formats("dali,parquet")
    assert parse_formats("all") == list(FORMATS) and parse_formats("dali, ffcv-raw") == ["ffcv-raw", "dali"]
    idx = tmp_path / "broken.idx.npz"
    idx.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable DALI index"):
        read_dali_index(idx)


def test_missing_ffcv_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv.writer", None)  # import fails as if not installed
    with pytest.raises(MissingPackage, match=r"pip install 'fastssl\[ffcv\]'"):
        ensure_formats(make_ds(), "ffcv-raw", cache_dir=tmp_path, verbose=False)


def test_cli_converts_and_reports_errors(tmp_path, tiny_folder, capsys):
    cache = tmp_path / "cache"
    assert main(["--data", str(tiny_folder), "--cache-dir", str(cache), "--formats", "dali", "-q"]) == 0
    out = capsys.readouterr().out
    assert "dali train:" in out and "dali test:" in out
    assert list(cache.glob("cifar10/formats-*/dali-train.tar")) and not list(tiny_folder.rglob("*.tar"))
    assert main(["--data", str(tiny_folder), "--cache-dir", str(cache), "--formats", "dali", "-q"]) == 0  # no-op
    assert main(["--data", str(tmp_path / "nowhere"), "--cache-dir", str(cache), "--formats", "all", "-q"]) == 2
    assert "nowhere" in capsys.readouterr().err
    corrupt = tmp_path / "cifar-10-python.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert main(["--data", str(corrupt), "--cache-dir", str(cache), "--formats", "all", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["--data", str(tiny_folder), "--cache-dir", str(cache), "--formats", "nope", "-q"]) == 2
    assert "unknown format" in capsys.readouterr().err


# ------------------------------------------------------------------ FFCV


def read_beton(path, n):
    pytest.importorskip("ffcv")
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=n, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    (x, y), = [(x.copy(), y.copy()) for x, y in loader]
    return x, y.reshape(-1)


def test_ffcv_raw_exact_and_jpeg_within_error(tmp_path):
    pytest.importorskip("ffcv")
    ds = make_ds()
    paths = ensure_formats(ds, ["ffcv-raw", "ffcv-jpg"], splits=("train",), cache_dir=tmp_path, verbose=False)
    x, y = read_beton(paths[("ffcv-raw", "train")], len(ds.train_y))
    np.testing.assert_array_equal(x, ds.train_x)
    np.testing.assert_array_equal(y, ds.train_y)
    x, y = read_beton(paths[("ffcv-jpg", "train")], len(ds.train_y))
    np.testing.assert_array_equal(y, ds.train_y)
    check_jpeg_error(x, ds.train_x)
    # Idempotent: a second call rewrites nothing.
    stamps = [p.stat().st_mtime_ns for p in paths.values()]
    ensure_formats(ds, ["ffcv-raw", "ffcv-jpg"], splits=("train",), cache_dir=tmp_path, verbose=False)
    assert [p.stat().st_mtime_ns for p in paths.values()] == stamps


# ------------------------------------------------------------------ DALI reads the tar as a webdataset


def test_dali_webdataset_reader_reads_the_tar(tmp_path):
    pytest.importorskip("nvidia.dali")
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    ds = make_ds(n_train=32)
    tar = ensure_formats(ds, "dali", splits=("train",), cache_dir=tmp_path, verbose=False)[("dali", "train")]

    @pipeline_def(batch_size=32, num_threads=1, device_id=None, seed=0)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=[str(tar)], ext=["jpg", "cls"], missing_component_behavior="error")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    images, labels = p.run()
    x = np.stack([np.asarray(images[i]) for i in range(32)])
    y = [int(bytes(np.asarray(labels[i])).decode()) for i in range(32)]
    assert y == ds.train_y.tolist()
    check_jpeg_error(x, ds.train_x)
