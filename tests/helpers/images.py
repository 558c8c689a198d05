"""Synthetic images, image folders and pixel CSVs: small pictures a tiny CNN can tell apart, saved in
every format and mode people's files come in, plus the broken files a real folder holds."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

# the cat/dog folders' class tints (the scrape's classes have their own: helpers.web.TINTS)
TINTS = {"cat": (255, 60, 0), "dog": (0, 60, 255)}


def photo(seed: int, tint=(0, 0, 0), size=(80, 64)) -> Image.Image:
    """A small RGB picture with its own perceptual hash (random colour blocks, smoothed) and a
    class tint a tiny CNN can learn."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3)).astype(np.float64)
    small = np.clip(small * 0.6 + np.array(tint) * 0.4, 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.BICUBIC)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def awkward(name: str, img: Image.Image) -> bytes:
    """`img` saved the way files people really have are saved."""
    if name == "rgba.png":
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        return encode(rgba, "PNG")
    if name == "palette.png":
        return encode(img.convert("P", palette=Image.ADAPTIVE), "PNG")
    if name == "gray16.png":
        return encode(Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257), "PNG")
    if name == "cmyk.jpg":
        return encode(img.convert("CMYK"), "JPEG")
    if name == "rotated.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
        return encode(img, "JPEG", exif=exif)
    fmt = {"photo.webp": "WEBP", "photo.bmp": "BMP", "photo.tif": "TIFF"}[name]
    return encode(img, fmt)


AWKWARD = [
    "rgba.png",
    "palette.png",
    "gray16.png",
    "cmyk.jpg",
    "photo.webp",
    "photo.bmp",
    "photo.tif",
    "rotated.jpg",
]


def make_folder(root, n_per_class: int = 12, seed0: int = 0) -> list[str]:
    """root/<class>/ with plain JPEGs in nested subfolders, every awkward mode, and broken files.
    Returns the files (relative to root) that must be skipped."""
    skipped = []
    seed = seed0
    for cls, tint in TINTS.items():
        d = root / cls
        (d / "nested" / "deeper").mkdir(parents=True)
        for i in range(n_per_class):
            seed += 1
            sub = d if i % 3 else d / "nested" / ("deeper" if i % 2 else "")
            (sub / f"{cls}_{i}.jpg").write_bytes(encode(photo(seed, tint)))
        for name in AWKWARD:
            seed += 1
            (d / f"{seed}_{name}").write_bytes(awkward(name, photo(seed, tint)))
        good = encode(photo(seed0 + 2000, tint))
        (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (d / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>")
        (d / "notes.txt").write_text("not an image")
        (d / "empty.png").write_bytes(b"")
        (d / ".DS_Store").write_bytes(b"\x00\x01")
        (d / "tiny.png").write_bytes(encode(photo(seed0 + 3000, tint, size=(10, 10)), "PNG"))
        skipped += [
            f"{cls}/truncated.jpg",
            f"{cls}/page.jpg",
            f"{cls}/notes.txt",
            f"{cls}/empty.png",
            f"{cls}/tiny.png",
        ]
    (root / "README.txt").write_text("stray file outside the class folders")
    return skipped


def pixel_csvs(raw, n=40, side=4, seed=0):
    """raw/ as a csv_pixels competition has it: train.csv with `n` rows of side x side pixels labelled
    0-3, test.csv with the first 6 rows, a sample_submission.csv. Returns (pixels, labels)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, side * side))
    labels = np.arange(n) % 4
    cols = [f"pixel{i}" for i in range(side * side)]
    train = pd.DataFrame(pixels, columns=cols)
    train.insert(0, "label", labels)
    test = pd.DataFrame(pixels[:6], columns=cols)
    raw.mkdir(parents=True)
    train.to_csv(raw / "train.csv", index=False)
    test.to_csv(raw / "test.csv", index=False)
    pd.DataFrame({"ImageId": range(1, 7), "Label": 0}).to_csv(raw / "sample_submission.csv", index=False)
    return pixels, labels


def labelled_images(n_per_class):
    """The (image, label) table make_folds takes: n_per_class[c] images of each class c."""
    rows = [(f"train/{c}/{i}.png", c) for c, n in n_per_class.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image", "label"])


def odd_images(folder):
    """The same digit saved the ways people's files come: CMYK, 16-bit, RGBA, palette, EXIF-rotated."""
    folder.mkdir()
    rgb = Image.open(next((folder.parent / "data" / "digits-demo" / "test").glob("1.png"))).convert("RGB")
    rgb = rgb.resize((56, 40))
    rgb.save(folder / "plain.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(folder / "grey16.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    rotated = rgb.transpose(Image.Transpose.ROTATE_270)  # stored sideways, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 8  # a viewer turns it 90° counter-clockwise
    rotated.save(folder / "exif.png", exif=exif)  # lossless: only the turn differs
    rgb.save(folder / "exif_twin.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")  # a broken link
    (folder / "sub").mkdir()
    buf = io.BytesIO()
    rgb.save(buf, "WEBP", lossless=True)
    (folder / "sub" / "nested.webp").write_bytes(buf.getvalue())
    return rgb
