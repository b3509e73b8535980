"""Your own images (``--dataset images``): a synthetic folder of mixed-size PNG/JPEG/WebP/GIF/BMP
files (RGBA, grayscale, palette, one corrupt), the same as a tar, resolutions 32 and 24, strict
mode, the cache (reused, and rebuilt when the folder changes), labelled folders for evaluation,
the process pool, the command line and the converted formats."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import DataError, Dataset, images, load_dataset
from data_prep.__main__ import main
from data_prep.dataset import channel_stats
from data_prep.formats import ensure_formats, read_dali_index

FLAT_GOOD = 9  # decodable images in flat_folder()


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour picture (JPEG and resizing behave as on photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    c = rng.uniform(40, 215, 3)
    img = c + 60 * np.sin(6 * xx[..., None] + rng.uniform(0, 6, 3)) + 40 * yy[..., None]
    return img.clip(0, 255).astype(np.uint8)


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def flat_folder(root: Path) -> Path:
    """Nine good images of many sizes, modes and formats (one in a sub-folder), one truncated
    JPEG, a hidden image and a text file (both ignored)."""
    save(root / "a_wide.png", Image.fromarray(smooth(40, 90, 1)))
    save(root / "b_tall.jpg", Image.fromarray(smooth(300, 200, 2)), quality=92)
    rgba = np.dstack([smooth(50, 50, 3), np.full((50, 50), 255, np.uint8)])
    rgba[:, :25, 3] = 0  # left half transparent
    save(root / "c_rgba.png", Image.fromarray(rgba, "RGBA"))
    save(root / "d_gray.png", Image.fromarray(smooth(17, 33, 4)[..., 0], "L"))
    save(root / "e_palette.gif", Image.fromarray(smooth(64, 64, 5)).convert("P"))
    save(root / "f.webp", Image.fromarray(smooth(24, 24, 6)), lossless=True)
    save(root / "g.bmp", Image.fromarray(smooth(8, 12, 7)))  # smaller than R: upscaled
    save(root / "h_big.jpeg", Image.fromarray(smooth(400, 600, 8)), quality=90)  # JPEG draft path
    save(root / "sub" / "i_nested.png", Image.fromarray(smooth(33, 31, 9)))
    good = io.BytesIO()
    Image.fromarray(smooth(64, 64, 10)).save(good, format="JPEG")
    (root / "broken.jpg").write_bytes(good.getvalue()[:300])  # header only: truncated
    save(root / ".hidden.png", Image.fromarray(smooth(32, 32, 11)))
    (root / "notes.txt").write_text("not an image")
    return root


def write_tar(folder: Path, path: Path, top: str = "", shuffle: bool = True) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if shuffle:
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for f in files:
            tar.add(f, arcname=f"{top}{f.relative_to(folder).as_posix()}")
    return path


def labelled_folder(root: Path, counts: dict[str, int], split: bool = False) -> Path:
    """Class sub-folders of solid-colour images (class c has colour 20 * (c + 1)); with
    ``split``, ``counts`` images in train/<class>/ and 2 in test/<class>/."""
    for c, (name, n) in enumerate(sorted(counts.items())):
        for where, k in ([("train/", n), ("test/", 2)] if split else [("", n)]):
            for i in range(k):
                img = np.full((20 + i, 30, 3), 20 * (c + 1), np.uint8)
                save(root / f"{where}{name}/{i:03d}.png", Image.fromarray(img))
    return root


def npz_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npz")) if cache.exists() else []


@pytest.fixture
def flat(tmp_path):
    return flat_folder(tmp_path / "photos")


# ----------------------------------------------------------------------------- flat folders

@pytest.mark.parametrize("resolution", [32, 24])
def test_flat_folder(flat, tmp_path, capsys, resolution):
    ds = load_dataset("images", flat, cache_dir=tmp_path / "c", resolution=resolution, verbose=False)
    r = resolution
    assert not ds.labeled and ds.name == "images" and ds.resolution == r
    assert ds.train_x.shape == (FLAT_GOOD, r, r, 3) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64 and (ds.train_y == -1).all()
    assert ds.test_x.shape == (0, r, r, 3) and ds.test_y.shape == (0,) and ds.test_y.dtype == np.int64
    assert ds.classes == [] and ds.num_classes == 0
    assert ds.skipped == ["broken.jpg"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "skipped 1 of 10 image files" in err[0]
    assert "broken.jpg" in err[0]
    assert all(0 < m < 255 for m in ds.mean) and all(s > 0 for s in ds.std)
    # Name order, recursive: the nested image comes last ("sub/i_nested.png").
    alone = images.decode_image(flat / "sub" / "i_nested.png", r)
    np.testing.assert_array_equal(ds.train_x[-1], alone)
    assert "unlabelled" in ds.summary() and f"{r}x{r}" in ds.summary()


def test_modes_become_rgb(flat):
    gray = images.decode_image(flat / "d_gray.png", 32)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = images.decode_image(flat / "c_rgba.png", 32)
    assert (rgba[4:-4, :12] == 255).all()  # transparent half over white
    assert (rgba[4:-4, 20:] < 250).any()
    palette = images.decode_image(flat / "e_palette.gif", 64)  # no resize at 64: exact
    with Image.open(flat / "e_palette.gif") as im:
        np.testing.assert_array_equal(palette, np.asarray(im.convert("RGB")))
    frames = [Image.new("RGB", (30, 30), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert (images.decode_image(gif.getvalue(), 16) == (255, 0, 0)).all()  # the first frame
    cmyk = Image_bytes(np.full((20, 30, 3), (200, 100, 50), np.uint8), "PNG")
    with Image.open(io.BytesIO(cmyk)) as im:
        cmyk = io.BytesIO()
        im.convert("CMYK").save(cmyk, format="JPEG", quality=95)
    assert np.abs(images.decode_image(cmyk.getvalue(), 8).astype(int) - (200, 100, 50)).max() <= 3
    sixteen = io.BytesIO()
    Image.fromarray(np.full((10, 10), 65535 // 2, np.uint16)).save(sixteen, format="PNG")
    assert abs(int(images.decode_image(sixteen.getvalue(), 8)[0, 0, 0]) - 127) <= 1


def test_shorter_side_then_centre_crop():
    # A wide image: only the central square is green; the sides are red and blue.
    img = np.zeros((40, 120, 3), np.uint8)
    img[:, :40] = (255, 0, 0)
    img[:, 40:80] = (0, 255, 0)
    img[:, 80:] = (0, 0, 255)
    out = images.decode_image(Image_bytes(img, "PNG"), 20)
    assert out.shape == (20, 20, 3)
    assert np.abs(out[:, 2:-2].astype(int) - (0, 255, 0)).max() <= 2  # Lanczos may ring at the edges
    # Tall: the middle rows; an upscaled small picture keeps its colours.
    tall = np.zeros((90, 30, 3), np.uint8)
    tall[30:60] = 200
    assert (np.abs(images.decode_image(Image_bytes(tall, "PNG"), 32)[3:-3].astype(int) - 200) <= 2).all()
    assert (images.decode_image(Image_bytes(np.full((4, 6, 3), 77, np.uint8), "BMP"), 32) == 77).all()


def Image_bytes(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_large_jpeg_draft_matches_full_decode(flat):
    # The reduced-scale JPEG decode (draft) must look like decoding in full, then resizing.
    with Image.open(flat / "h_big.jpeg") as im:
        full = im.convert("RGB").crop((100, 0, 500, 400)).resize((32, 32), Image.Resampling.LANCZOS)
    fast = images.decode_image(flat / "h_big.jpeg", 32)
    assert np.abs(fast.astype(int) - np.asarray(full, dtype=int)).mean() < 2.0


def test_exif_orientation_is_applied():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:20, :20] = 255  # white top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out = images.decode_image(buf.getvalue(), 40)
    assert out[5:15, 25:35].mean() > 200 and out[5:15, 5:15].mean() < 50  # now top-right


def test_tar_matches_folder(flat, tmp_path):
    from_dir = load_dataset("images", flat, cache_dir=tmp_path / "c1", verbose=False)
    # Shuffled member order, one wrapping folder, gzip: same arrays.
    tar = write_tar(flat, tmp_path / "photos.tar.gz", top="photos/")
    from_tar = load_dataset("images", tar, cache_dir=tmp_path / "c2", verbose=False)
    np.testing.assert_array_equal(from_tar.train_x, from_dir.train_x)
    assert from_tar.skipped == ["photos/broken.jpg"] and not from_tar.labeled
    assert from_tar.source.startswith("image archive")


def test_strict_names_broken_files_and_caches_nothing(flat, tmp_path):
    (flat / "zz_garbage.png").write_bytes(b"\x89PNG not really")
    cache = tmp_path / "c"
    with pytest.raises(DataError) as info:
        load_dataset("images", flat, cache_dir=cache, strict=True, verbose=False)
    msg = str(info.value)
    assert "2 of 11 image files could not be decoded" in msg and "broken.jpg" in msg
    assert "zz_garbage.png" in msg and "--strict" in msg and "\n" not in msg
    assert npz_files(cache) == []
    # Not strict: skipped; then strict again finds the cached list and still refuses.
    ds = load_dataset("images", flat, cache_dir=cache, verbose=False)
    assert ds.skipped == ["broken.jpg", "zz_garbage.png"]
    with pytest.raises(DataError, match="2 of 11 image files.*zz_garbage.png"):
        load_dataset("images", flat, cache_dir=cache, strict=True, verbose=False)


def test_many_broken_files_one_line(tmp_path, capsys):
    root = tmp_path / "bad"
    save(root / "ok.png", Image.fromarray(smooth(10, 10, 0)))
    for i in range(12):
        (root / f"bad{i:02d}.jpg").write_bytes(b"nope")
    ds = load_dataset("images", root, cache_dir=tmp_path / "c", verbose=False)
    assert len(ds.train_x) == 1 and len(ds.skipped) == 12
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 12 of 13" in err and "bad00.jpg" in err
    assert "(+7 more)" in err and "bad11.jpg" not in err


def test_no_valid_images_is_an_error(tmp_path):
    cache = tmp_path / "c"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load_dataset("images", empty, cache_dir=cache, verbose=False)
    (empty / "a.jpg").write_bytes(b"")
    (empty / "b.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"none of the 2 image files could be decoded: a.jpg \(.*\), b.png"):
        load_dataset("images", empty, cache_dir=cache, verbose=False)
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset("images", tmp_path / "nope", cache_dir=cache, verbose=False)
    with pytest.raises(DataError, match="not a folder or a tar archive"):
        load_dataset("images", empty / "readme.txt", cache_dir=cache, verbose=False)
    garbage = tmp_path / "x.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="x.tar: corrupt, truncated or unreadable"):
        load_dataset("images", garbage, cache_dir=cache, verbose=False)
    with pytest.raises(DataError, match="needs --data PATH"):
        load_dataset("images", cache_dir=cache, verbose=False)
    with pytest.raises(DataError, match="resolution must be"):
        load_dataset("images", empty, cache_dir=cache, resolution=0, verbose=False)
    with pytest.raises(DataError, match="cifar10 images are 32x32"):
        load_dataset("cifar10", empty, cache_dir=cache, resolution=24, verbose=False)
    assert npz_files(cache) == []


# ----------------------------------------------------------------------------- cache

def test_cache_reused_and_rebuilt_on_change(flat, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = load_dataset("images", flat, cache_dir=cache, verbose=False)
    assert first.cache_path is not None and first.cache_path.parent == cache / "images"
    assert not list(flat.rglob("*.npz"))  # nothing written next to the data
    calls = []
    real = images.read_images
    monkeypatch.setattr(images, "read_images", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = load_dataset("images", flat, cache_dir=cache, verbose=False)
    assert calls == [] and again.cache_path == first.cache_path
    np.testing.assert_array_equal(again.train_x, first.train_x)
    assert not again.labeled and again.skipped == ["broken.jpg"] and again.mean == pytest.approx(first.mean)
    # Another resolution: another cache file.
    r24 = load_dataset("images", flat, cache_dir=cache, resolution=24, verbose=False)
    assert len(calls) == 1 and r24.cache_path != first.cache_path and r24.resolution == 24
    # The folder changes (a new picture): read again, one more image.
    save(flat / "j_new.png", Image.fromarray(smooth(50, 70, 12)))
    changed = load_dataset("images", flat, cache_dir=cache, verbose=False)
    assert len(calls) == 2 and len(changed.train_x) == FLAT_GOOD + 1
    # A file rewritten in place (new size/mtime) too.
    save(flat / "a_wide.png", Image.fromarray(smooth(40, 90, 99)))
    os.utime(flat / "a_wide.png", ns=(10**18, 10**18))
    load_dataset("images", flat, cache_dir=cache, verbose=False)
    assert len(calls) == 3


def test_interrupt_caches_nothing(flat, tmp_path, monkeypatch):
    real, seen = images.decode_image, []

    def interrupted(src, r):
        seen.append(src)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return real(src, r)

    monkeypatch.setattr(images, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("images", flat, cache_dir=tmp_path / "c", verbose=False)
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []


# ----------------------------------------------------------------------------- labelled folders

def test_labelled_class_folders_split_80_20(tmp_path):
    counts = {"cat": 10, "dog": 5, "emu": 1}
    root = labelled_folder(tmp_path / "pets", counts)
    ds = load_dataset("images", root, cache_dir=tmp_path / "c", verbose=False)
    assert ds.labeled and ds.classes == ["cat", "dog", "emu"] and ds.resolution == 32
    assert np.bincount(ds.train_y, minlength=3).tolist() == [8, 4, 1]  # a lone image stays in train
    assert np.bincount(ds.test_y, minlength=3).tolist() == [2, 1, 0]
    for x, y in ((ds.train_x, ds.train_y), (ds.test_x, ds.test_y)):
        assert (x[:, :, :, 0] == 20 * (y[:, None, None] + 1)).all()  # each image under its class
    ds.validate()
    # Deterministic: a fresh read gives the same split; another class leaves this one alone.
    again = load_dataset("images", root, cache_dir=tmp_path / "c2", verbose=False)
    np.testing.assert_array_equal(again.test_x, ds.test_x)
    mask = images.split_mask("cat", 10)
    assert mask.sum() == 2 and (images.split_mask("cat", 10) == mask).all()
    labelled_folder(tmp_path / "more", {**counts, "fox": 4})
    more = load_dataset("images", tmp_path / "more", cache_dir=tmp_path / "c3", verbose=False)
    np.testing.assert_array_equal(more.test_x[more.test_y == 0], ds.test_x[ds.test_y == 0])


def test_labelled_train_test_tree_and_tar(tmp_path):
    root = labelled_folder(tmp_path / "tree", {"a": 3, "b": 4}, split=True)
    ds = load_dataset("images", root, cache_dir=tmp_path / "c", resolution=16, verbose=False)
    assert ds.labeled and ds.classes == ["a", "b"] and ds.train_x.shape == (7, 16, 16, 3)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1] and ds.test_y.tolist() == [0, 0, 1, 1]
    tar = write_tar(root, tmp_path / "tree.tar", top="mydata/")
    from_tar = load_dataset("images", tar, cache_dir=tmp_path / "c", resolution=16, verbose=False)
    np.testing.assert_array_equal(from_tar.train_x, ds.train_x)
    np.testing.assert_array_equal(from_tar.test_y, ds.test_y)
    # A single class folder is just a folder of images: unlabelled.
    one = labelled_folder(tmp_path / "one", {"only": 3})
    assert not load_dataset("images", one, cache_dir=tmp_path / "c", verbose=False).labeled


def test_layout_rules():
    assert images.layout(["a.png", "b/c.png"])[0] == "flat"  # images at the top: no classes
    assert images.layout(["x/a.png", "y/b.png"])[0] == "classes"
    assert images.layout(["top/x/a.png", "top/y/b.png"])[0] == "classes"  # wrapper unwrapped
    assert images.layout(["train/x/a.png", "test/x/b.png"])[0] == "splits"
    assert images.layout(["train/a.png", "test/b.png"])[0] == "flat"  # no class folders below
    assert images.layout(["top/train/a/x.png", "top/test/a/y.png"])[0] == "splits"


# ----------------------------------------------------------------------------- process pool

def test_process_pool_gives_the_same_result(flat, tmp_path, monkeypatch):
    inline = images.read_images(flat, 24, verbose=False, workers=1)
    monkeypatch.setattr(images, "CHUNK", 2)
    monkeypatch.setattr(images, "POOL_MIN_IMAGES", 2)  # 2 here, the other 8 files in the pool
    pooled = images.read_images(flat, 24, verbose=False, workers=2)
    np.testing.assert_array_equal(pooled.train_x, inline.train_x)
    assert pooled.skipped == inline.skipped == ["broken.jpg"]
    # From a tar the pool gets the files' bytes, in archive order; the result is sorted the same.
    tar = images.read_images(write_tar(flat, tmp_path / "p.tar"), 24, verbose=False, workers=2)
    np.testing.assert_array_equal(tar.train_x, inline.train_x)
    assert tar.skipped == ["broken.jpg"]


def test_progress_is_plain_lines_off_a_terminal(capsys):
    from data_prep.progress import Progress

    with Progress(10, "decoding x", verbose=True, every_s=0) as p:
        p.update(5)
    err = capsys.readouterr().err
    assert "decoding x: 5/10 img (50%)" in err and "\r" not in err and err.count("\n") == 2
    with Progress(None, "quiet", verbose=False, every_s=0) as p:
        p.update(3)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- Dataset, stats

def test_unlabelled_dataset_validation():
    x = np.zeros((3, 24, 24, 3), np.uint8)
    empty_x, empty_y = np.zeros((0, 24, 24, 3), np.uint8), np.zeros(0, np.int64)
    Dataset("images", x, np.full(3, -1, np.int64), empty_x, empty_y, [], "m", labeled=False).validate(resolution=24)
    with pytest.raises(DataError, match="has labels"):
        Dataset("images", x, np.zeros(3, np.int64), empty_x, empty_y, [], "m", labeled=False).validate()
    with pytest.raises(DataError, match="no test split"):
        Dataset("images", x, np.full(3, -1, np.int64), x, np.full(3, -1, np.int64), [], "m",
                labeled=False).validate()
    with pytest.raises(DataError, match=r"not uint8 \(N, 32, 32, 3\)"):
        Dataset("images", x, np.full(3, -1, np.int64), empty_x, empty_y, [], "m", labeled=False).validate(resolution=32)
    with pytest.raises(DataError, match="test split is empty"):  # labelled datasets need both splits
        Dataset("images", x, np.zeros(3, np.int64), empty_x, empty_y, ["a"], "m").validate()


@pytest.mark.parametrize("size", [24, 7])
def test_channel_stats_exact_for_any_size(size):
    x = np.random.default_rng(size).integers(0, 256, (300, size, size, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-9)


def test_channel_stats_large_images_do_not_overflow():
    # 1050 images of 128x128 at 255: per-chunk uint32 sums of 1024 such images would overflow.
    x = np.full((1050, 128, 128, 3), 255, np.uint8)
    v = np.array([0.0, 1.0, 2.0])
    x[0, 0, 0] = v
    mean, std = channel_stats(x)
    p = x.size // 3
    want_mean = (255.0 * (p - 1) + v) / p
    want_std = np.sqrt(((p - 1) * (255 - want_mean) ** 2 + (v - want_mean) ** 2) / p)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(std, want_std, rtol=1e-4)


# ----------------------------------------------------------------------------- CLI and formats

def test_cli_images(flat, tmp_path, capsys):
    cache = str(tmp_path / "c")
    assert main(["--dataset", "images", "--data", str(flat), "--resolution", "24", "--cache-dir", cache, "-q"]) == 0
    captured = capsys.readouterr()
    assert "images: 9 train / 0 test images, unlabelled, 24x24" in captured.out
    assert "skipped: 1 broken image files" in captured.out and "broken.jpg" in captured.err
    assert main(["--dataset", "images", "--data", str(flat), "--strict", "--cache-dir", cache, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "broken.jpg" in err
    assert main(["--dataset", "images", "--cache-dir", cache, "-q"]) == 2
    assert "needs --data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--dataset", "images", "--data", str(flat), "--resolution", "big"])
    assert info.value.code == 2
    assert "--resolution: must be a whole number" in capsys.readouterr().err
    # Converted for DALI: the train split only, 24x24 JPEGs, label -1.
    assert main(["--dataset", "images", "--data", str(flat), "--resolution", "24", "--cache-dir", cache,
                 "--formats", "dali", "-q"]) == 0
    out = capsys.readouterr().out
    assert "dali train:" in out and "dali test:" not in out
    tar = next((tmp_path / "c" / "images").glob("formats-*/dali-train.tar"))
    index = read_dali_index(tar.with_suffix(".idx.npz"))
    assert index["labels"].tolist() == [-1] * 9
    with tarfile.open(tar) as t, Image.open(t.extractfile("000000.jpg")) as im:
        assert im.size == (24, 24)


def test_formats_refuse_missing_test_split(flat, tmp_path):
    ds = load_dataset("images", flat, cache_dir=tmp_path / "c", verbose=False)
    with pytest.raises(DataError, match="unlabelled and has no test split"):
        ensure_formats(ds, "dali", cache_dir=tmp_path / "c", verbose=False)


@pytest.mark.slow  # importing FFCV (numba) takes ~25 s on the 2-core CI machine
def test_ffcv_raw_any_resolution_exact(flat, tmp_path):
    pytest.importorskip("ffcv")
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    ds = load_dataset("images", flat, cache_dir=tmp_path / "c", resolution=24, verbose=False)
    path = ensure_formats(ds, "ffcv-raw", splits=("train",), cache_dir=tmp_path / "c", verbose=False)[("ffcv-raw", "train")]
    loader = Loader(str(path), batch_size=len(ds.train_x), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    (x, y), = [(x.copy(), y.copy()) for x, y in loader]
    np.testing.assert_array_equal(x, ds.train_x)
    assert y.reshape(-1).tolist() == [-1] * len(ds.train_x)
