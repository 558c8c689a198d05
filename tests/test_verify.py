"""`make data` decodes every image once (verify.py): unreadable ones are left out or listed, sizes and
hashes are kept for `inspect`; and images.py refuses decompression bombs before any decoder runs."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

import kagglecv.prepare.verify as verify
from kagglecv.core import images
from kagglecv.core.competition import load_competition
from kagglecv.core.images import PixelBudget, check_image, decode, measure, phash_hex
from kagglecv.prepare.inspect import inspect_data
from kagglecv.prepare.layout import prepare


def _jpeg(seed: int, size=(160, 120), progressive=False) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF: one IFD with ImageWidth and ImageLength, nothing a decoder could use."""
    entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\0\0\0\0"


@pytest.mark.parametrize("progressive", [False, True])
def test_draft_decode_still_catches_truncation(monkeypatch, progressive):
    drafted = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafted.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = _jpeg(1, size=(500, 375), progressive=progressive)
    whole = measure(data)
    assert drafted and (whole.width, whole.height, whole.mode) == (500, 375, "RGB")
    # the draft's hash is the full decode's within a few bits: one hash for make data, inspect, holdout
    full = int(phash_hex(decode(data)[0]), 16)
    assert bin(int(whole.phash, 16) ^ full).count("1") <= 4
    for cut in (0.3, 0.8, 0.97):
        with pytest.raises(OSError, match="truncated"):
            measure(data[: int(len(data) * cut)])


def test_exif_rotated_jpeg_measures_upright():
    img = Image.open(io.BytesIO(_jpeg(2, size=(200, 100))))
    exif = img.getexif()
    exif[images.ORIENTATION] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    m = measure(buf.getvalue())
    assert (m.width, m.height) == (100, 200)
    full = int(phash_hex(decode(buf.getvalue())[0]), 16)  # upright, as the hash of the full decode
    assert bin(int(m.phash, 16) ^ full).count("1") <= 4


def _kaggle_like(workdir, n_per_class=7, broken_train=("cat.3.jpg", "dog.5.jpg"), broken_test=("3.jpg",)):
    """dogs-vs-cats as Kaggle's zip unpacks into raw/: train/<cls>.<i>.jpg, test1/<i>.jpg."""
    raw = workdir / "data" / "dogs-vs-cats" / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "test1").mkdir()
    for i in range(n_per_class):
        for k, cls in enumerate(("cat", "dog")):
            (raw / "train" / f"{cls}.{i}.jpg").write_bytes(_jpeg(10 * i + k))
    for i in range(1, 5):
        (raw / "test1" / f"{i}.jpg").write_bytes(_jpeg(100 + i))
    for name in broken_train:  # the first cut short, the next an error page saved as .jpg
        data = (raw / "train" / name).read_bytes()
        (raw / "train" / name).write_bytes(data[: len(data) // 2] if name.startswith("cat") else b"<html>")
    for name in broken_test:
        data = (raw / "test1" / name).read_bytes()
        (raw / "test1" / name).write_bytes(data[: len(data) // 2])
    pd.DataFrame({"id": range(1, 5), "label": 0}).to_csv(raw / "sampleSubmission.csv", index=False)
    comp = load_competition("dogs-vs-cats")
    comp.source = {"kind": "builtin", "dataset": "none"}  # raw/ already there: the source is not asked
    return comp, raw


def test_make_data_leaves_out_unreadable_train_and_lists_test(workdir, capsys):
    comp, raw = _kaggle_like(workdir)
    (raw / "train" / "cat.7.png").write_bytes(_png_header_only(11_000, 10_000))  # over the pixel cap
    prepare(comp)
    out = " ".join(capsys.readouterr().out.split())
    root = comp.data_dir
    info = json.loads((root / "prepared.json").read_text())
    assert info["unreadable_train"] == ["train/cat/cat.3.jpg", "train/cat/cat.7.png", "train/dog/dog.5.jpg"]
    assert info["unreadable_test"] == ["3.jpg"]  # as submit names it: relative to test/
    assert "3 of 15 training images do not decode (1 of them over 100,000,000 pixels" in out
    assert "left out of every fold" in out
    assert "1 of 4 test images do not decode: 3.jpg" in out and "class prior" in out
    folds = pd.read_csv(root / "folds.csv")
    assert len(folds) == 12 == info["n_train"] and "train/cat/cat.3.jpg" not in set(folds["image"])
    assert not (root / "train" / "cat" / "cat.3.jpg").exists() and (raw / "train" / "cat.3.jpg").exists()
    assert (root / "test" / "3.jpg").exists() and info["n_test"] == 4  # Kaggle scores every id
    table = pd.read_csv(root / verify.IMAGES, keep_default_na=False)
    assert len(table) == 12 + 4 and set(table.columns) == set(verify.COLUMNS)
    assert table.set_index("image").loc["test/3.jpg", "width"] == 0
    sizes = table[table["image"] != "test/3.jpg"][["width", "height"]].drop_duplicates()
    assert sizes.values.tolist() == [[160, 120]]


def test_inspect_reads_images_csv_instead_of_decoding(workdir, monkeypatch, capsys):
    comp, _ = _kaggle_like(workdir, broken_train=(), broken_test=())
    prepare(comp)
    calls = []
    real = images.measure
    monkeypatch.setattr(images, "measure", lambda data: calls.append(1) or real(data))
    figures = inspect_data(comp, samples=1)
    assert calls == [] and figures["train_counts"] == {"cat": 7, "dog": 7}
    assert figures["undecodable"] == 0
    # an image changed after make data is measured again, and only that one
    (comp.data_dir / "test" / "2.jpg").write_bytes(b"garbage")
    figures = inspect_data(comp, samples=1)
    assert len(calls) == 1 and figures["undecodable"] == 1
    # an image deleted since: reported, no traceback
    (comp.data_dir / "train" / "cat" / "cat.0.jpg").unlink()
    figures = inspect_data(comp, samples=1)
    assert figures["undecodable"] == 2 and "train/cat/cat.0.jpg" in capsys.readouterr().out
    # data prepared by an older kagglecv (no images.csv, no cache) is measured as before
    (comp.data_dir / verify.IMAGES).unlink()
    (comp.data_dir / "inspect" / "hashes.csv").unlink()
    calls.clear()
    inspect_data(comp, samples=1)
    assert len(calls) == 13 + 4  # every image still there (the garbage one too), once


def test_processes_and_threads_measure_alike(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(_jpeg(i))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    paths.append(tmp_path / "bad.jpg")
    threads = verify.measure_many(paths, description="t", workers=2, processes=False)
    procs = verify.measure_many(paths, description="p", workers=2, processes=True)
    assert threads == procs and threads[-1][2] == 0 and threads[0][2:4] == (160, 120)


def test_png_bomb_refused_before_decoding(monkeypatch):
    def never(*_):
        raise AssertionError("a decoder ran on a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    bomb = _png_header_only(11_000, 10_000)  # over our cap, under the one PIL enforces itself
    check = check_image(bomb)
    assert check.status == "too_many_pixels" and "11000x10000" in check.detail
    with pytest.raises(Image.DecompressionBombError):
        measure(bomb)


def test_tiff_only_opencv_reads_is_checked_before_opencv(monkeypatch):
    import cv2

    def unreadable(*_, **__):
        raise Image.UnidentifiedImageError("cannot identify image file")

    monkeypatch.setattr(images.Image, "open", unreadable)  # as PIL does with some TIFFs
    called = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: called.append(1) or real(*a))
    assert check_image(_tiff_header_only(20_000, 20_000)).status == "too_many_pixels"
    assert check_image(b"II*\x00" + b"\xff" * 40).status == "corrupt"  # no readable size: refused
    assert called == []
    ok, encoded = cv2.imencode(".tiff", np.full((40, 50, 3), 128, np.uint8))
    rgb, fmt, _, _ = decode(encoded.tobytes())  # an ordinary TIFF still gets OpenCV's second opinion
    assert called == [1] and fmt == "TIFF" and rgb.size == (50, 40)


def _tiff_two_widths(first: int, second: int) -> bytes:
    """A real 50x40 TIFF (OpenCV's) whose IFD names ImageWidth twice: `first` in its own entry, and
    `second` in the slot of PlanarConfiguration (1, the default, so nothing else changes)."""
    import cv2

    ok, encoded = cv2.imencode(".tiff", np.full((40, 50, 3), 128, np.uint8))
    data = bytearray(encoded.tobytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    tags = [struct.unpack_from("<H", data, ifd + 2 + 12 * k)[0] for k in range(count)]
    assert ok and tags[0] == 256 and 284 in tags
    struct.pack_into("<HHII", data, ifd + 2, 256, 4, 1, first)
    struct.pack_into("<HHII", data, ifd + 2 + 12 * tags.index(284), 256, 4, 1, second)
    return bytes(data)


@pytest.mark.parametrize(("first", "second"), [(50, 3_000_000), (3_000_000, 50)])
def test_tiff_with_two_widths_is_measured_as_libtiff_reads_it(monkeypatch, first, second):
    """libtiff (OpenCV's TIFF decoder) keeps the first of a repeated tag and ignores the rest; the
    pre-check kept the last, so a huge first width hid behind a small second one and was decoded."""
    import cv2

    def unreadable(*_, **__):
        raise Image.UnidentifiedImageError("cannot identify image file")

    monkeypatch.setattr(images.Image, "open", unreadable)  # only OpenCV's fallback reads it
    data = _tiff_two_widths(first, second)
    assert images.tiff_size(data) == (first, 40)
    called = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: called.append(1) or real(*a))
    check = check_image(data)
    if first > second:  # 3,000,000 x 40 is over the 100 M pixel cap: refused before any decoder
        assert check.status == "too_many_pixels" and "3000000x40" in check.detail and called == []
    else:  # as libtiff sees it: the 50x40 picture it is
        assert check.status == "kept" and (check.width, check.height) == (50, 40) and called == [1]


def test_opencv_cap_is_set_before_cv2_loads(tmp_path):
    """OpenCV reads its cap once, when it loads: importing kagglecv first must set it."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(11_000, 10_000))  # 110 M pixels: under OpenCV's default cap
    code = (
        "import kagglecv, cv2, numpy as np\n"
        f"cv2.imdecode(np.fromfile({str(bomb)!r}, np.uint8), cv2.IMREAD_GRAYSCALE)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "CV_IO_MAX_IMAGE_PIXELS" in run.stderr + run.stdout


def test_pixel_budget_bounds_decodes_at_once():
    budget, peak, lock = PixelBudget(100), [0], threading.Lock()

    def decode_one(pixels):
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.01)

    threads = [threading.Thread(target=decode_one, args=(p,)) for p in (60, 60, 30, 150, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert peak[0] <= 150 and budget.in_use == 0  # over the limit only when alone (the 150)


def test_holdout_hashes_hand_made_raw_like_make_data(tmp_path):
    from kagglecv.prepare.holdout import kept_images

    for cls in ("a", "b"):
        (tmp_path / cls / "sub").mkdir(parents=True)
        (tmp_path / cls / "sub" / "1.jpg").write_bytes(_jpeg(ord(cls), size=(200, 150)))
    (tmp_path / "a" / "broken.jpg").write_bytes(_jpeg(5)[:300])
    kept = kept_images(tmp_path)
    assert kept["file"].tolist() == ["a/sub/1.jpg", "b/sub/1.jpg"]
    assert kept["phash"].iloc[0] == measure((tmp_path / "a" / "sub" / "1.jpg").read_bytes()).phash


PARENT = os.getpid()


def _dies_in_a_worker(path):
    if os.getpid() != PARENT:
        os._exit(1)  # as the kernel's OOM killer ends a worker
    return path.name


def test_dead_worker_processes_fall_back_to_threads(tmp_path):
    paths = [tmp_path / f"{i}.jpg" for i in range(5)]
    got = verify.measure_many(paths, description="t", fn=_dies_in_a_worker, workers=2, processes=True)
    assert got == [p.name for p in paths]
