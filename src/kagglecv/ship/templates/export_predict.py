#!/usr/bin/env python3
"""Predict images with this exported kagglecv model. Needs only torch, timm, numpy and Pillow
(OpenCV, where installed, makes the resize bit-identical to kagglecv's; without it a NumPy resize
that differs by at most one grey level in a few pixels stands in).

    python predict.py photo.jpg holiday/ 'shots/*.png' [--out predictions.csv] [--device cpu|cuda]

Reads model.json and the fold<k>.safetensors files beside this script; takes the images as
`kagglecv predict` does (files, folders searched recursively with hidden ones aside, globs; each
file once) and writes one CSV row per image: image, class, prob (the best class and its
probability), then p_<class> for every class (the mean over the folds of the softmax, averaged over
the test-time flips in model.json, then model.json's postprocess: the temperature / clipping
kagglecv's submit applies). A file that cannot be read (not an image's extension, empty, damaged,
over MAX_PIXELS) gets the reason kagglecv gives and no prediction. model.onnx holds the same
ensemble (input: float32 N x 3 x H x W RGB pixels in 0..255 at img_size; output: N x C probabilities).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file  # installed with timm

HERE = Path(__file__).resolve().parent
# kagglecv's own values, copied so that this script needs no kagglecv (its tests keep them equal):
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}  # kagglecv.core.images.IMAGE_EXTS
MAX_PIXELS = 100_000_000  # kagglecv.MAX_PIXELS
ORIENTATION = 0x0112  # EXIF tag
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_PIXELS)  # OpenCV reads it once, when cv2 loads


def load_models(folder: Path = HERE, device: str = "cpu") -> tuple[dict, list[torch.nn.Module]]:
    """model.json and one timm model per fold, in eval mode on `device`."""
    spec = json.loads((folder / "model.json").read_text())
    models = []
    for name in spec["weights"]:
        model = timm.create_model(
            spec["model"], pretrained=False, num_classes=spec["num_classes"], in_chans=spec["in_chans"]
        )
        model.load_state_dict(load_file(str(folder / name)))
        models.append(model.to(device).eval())
    return spec, models


# ---- decoding: any mode (CMYK, 16-bit, palette, alpha), EXIF-rotated, as kagglecv decodes ----


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency goes onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr, top = arr - lo, max(hi - lo, 1e-12)
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(path: Path) -> np.ndarray:
    """Upright RGB uint8 pixels of an image file; OSError/ValueError when it is none."""
    return decode_bytes(path.read_bytes())


def decode_bytes(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():  # Pillow's own limit (twice its warning's) stands, as in kagglecv
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"{img.width}x{img.height} pixels")
    try:
        img.load()
    except OSError:
        if data[:4] not in TIFF_MAGIC:  # only a TIFF gets a second opinion, as in kagglecv
            raise
        try:  # 16-bit RGB TIFF and the like: OpenCV reads some files PIL cannot
            import cv2
        except ImportError:
            raise
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if arr is None:
            raise
        return arr[:, :, ::-1].copy()
    if img.getexif().get(ORIENTATION, 1) not in (None, 1):
        img = ImageOps.exif_transpose(img)
    return np.asarray(to_rgb(img), dtype=np.uint8)


# ---- resize: squashed to size x size, area-averaged when shrinking, else bilinear -------------


def _weights(n: int, m: int, area: bool) -> np.ndarray:
    """m x n resampling matrix along one axis, as OpenCV's INTER_AREA / INTER_LINEAR compute it."""
    scale, w = n / m, np.zeros((m, n))
    for x in range(m):
        if area:
            lo, hi = x * scale, (x + 1) * scale
            for s in range(int(np.floor(lo)), min(int(np.ceil(hi)), n)):
                w[x, s] = (min(hi, s + 1) - max(lo, s)) / scale
        else:
            f = (x + 0.5) * scale - 0.5
            s = int(np.floor(f))
            f -= s
            if s < 0:
                s, f = 0, 0.0
            if s >= n - 1:
                s, f = n - 1, 0.0
            w[x, s] += 1 - f
            if f:
                w[x, s + 1] += f
    return w


def squash(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h == size and w == size:
        return rgb
    area = min(h, w) > size
    try:
        import cv2

        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    except ImportError:
        rows = np.tensordot(_weights(h, size, area), rgb.astype(np.float64), axes=(1, 0))  # size x w x 3
        out = np.tensordot(rows, _weights(w, size, area), axes=(1, 1)).transpose(0, 2, 1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---- the ensemble ----------------------------------------------------------------------------


@torch.no_grad()
def predict(spec: dict, models: list[torch.nn.Module], images: np.ndarray) -> np.ndarray:
    """N x C probabilities for uint8 N x H x W x 3 images at img_size: per fold the softmax averaged
    over the flips, then averaged over the folds."""
    device = next(models[0].parameters()).device
    mean = torch.tensor(spec["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], device=device).view(1, -1, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device).float().div_(255.0)
    x = (x - mean) / std
    views = [x] + [torch.flip(x, dims=[3] if f == "hflip" else [2]) for f in spec["tta"]]
    total = 0
    for model in models:
        p = 0
        for view in views:
            p = p + model(view).float().softmax(1)
        total = total + p / len(views)
    return (total / len(models)).cpu().numpy()


def postprocess(spec: dict, probs: np.ndarray) -> np.ndarray:
    """model.json's post-processing, as kagglecv's submit applies it: softmax(log p / T), then p
    clipped to [eps, 1 - eps] and renormalised."""
    plan = spec.get("postprocess") or {}
    if "T" in plan:
        logits = np.log(np.clip(probs, 1e-15, 1.0)) / plan["T"]
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        probs = e / e.sum(1, keepdims=True)
    if "eps" in plan:
        probs = np.clip(probs, plan["eps"], 1 - plan["eps"])
        probs = probs / probs.sum(1, keepdims=True)
    return probs


# ---- inputs -> image files: as `kagglecv predict` takes them ----------------------------------


def folder_images(folder: Path) -> list[Path]:
    """Image files under a folder, hidden ones aside."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTS
        and (p.is_file() or p.is_symlink())
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named directly, found in folders or matched by globs, in order, each once; ValueError
    for a name that matches nothing (before any model loads)."""
    out: list[Path] = []
    for arg in inputs:
        path = Path(arg).expanduser()
        if glob.has_magic(arg) and not path.exists():
            hits = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files = [p for h in hits for p in (folder_images(h) if h.is_dir() else [h])]
            if not files:
                raise ValueError(
                    f"{arg} matches no file (quote the pattern so the shell leaves it to predict.py)"
                )
        elif path.is_dir():
            files = folder_images(path)
            if not files:
                exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTS))
                raise ValueError(f"folder {arg} holds no image ({exts})")
        elif path.exists() or path.is_symlink():
            files = [path]
        else:
            raise ValueError(f"{arg} does not exist (an image file, a folder of images or a glob)")
        out.extend(files)
    return list(dict.fromkeys(out))


def load_image(path: Path, size: int) -> np.ndarray | str:
    """RGB uint8 at size x size, or why the file cannot be read (kagglecv's words)."""
    if path.suffix.lower() not in IMAGE_EXTS:
        return f"extension {path.suffix or '(none)'} is not an image's"
    try:
        data = path.read_bytes()
    except OSError as e:
        return e.strerror or type(e).__name__
    if not data:
        return "empty file"
    try:
        rgb = decode_bytes(data)
    except Exception as e:  # noqa: BLE001 -- damaged files raise all sorts (struct.error, EOFError, ...)
        return f"cannot decode ({decode_reason(e)})"
    return squash(rgb, size)


def decode_reason(e: Exception) -> str:
    """Why a file did not decode, in kagglecv's words (no "<_io.BytesIO object at 0x...>")."""
    if isinstance(e, UnidentifiedImageError) or str(e).startswith("cannot identify image file"):
        return "not an image Pillow or OpenCV can read"
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e))[:80] or type(e).__name__


def nothing_read(names: list[str], errors: dict) -> str:
    """The error when no file could be read (kagglecv predict's words): nothing predicted, no CSV."""
    first = next(iter(errors))
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"no image could be read ({first}: {errors[first]}{more}): nothing predicted, no CSV written"


def predict_files(files: list[Path], spec: dict, models, batch_size: int = 64):
    """(image names, N x C probabilities with NaN rows for unreadable files, {name: error})."""
    names = [str(p) for p in files]
    probs = np.full((len(files), len(spec["classes"])), np.nan)
    errors = {}
    for start in range(0, len(files), batch_size):
        rows, images = [], []
        for i in range(start, min(start + batch_size, len(files))):
            img = load_image(files[i], spec["img_size"])
            if isinstance(img, str):
                errors[names[i]] = img
            else:
                images.append(img)
                rows.append(i)
        if rows:
            probs[rows] = postprocess(spec, predict(spec, models, np.stack(images)))
    return names, probs, errors


def write_csv(out: Path, names: list[str], probs: np.ndarray, errors: dict, classes: list[str]) -> None:
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "prob", *[f"p_{c}" for c in classes], "error"])
        for name, row in zip(names, probs, strict=True):
            if name in errors:
                w.writerow([name, "", "", *[""] * len(classes), errors[name]])
            else:
                best = int(row.argmax())
                w.writerow([name, classes[best], repr(float(row[best])), *[repr(float(v)) for v in row], ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict images with this exported model.")
    parser.add_argument(
        "images", nargs="+", help="image files, folders of images (searched recursively) or globs"
    )
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        files = expand_inputs(args.images)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec, models = load_models(HERE, args.device)
    names, probs, errors = predict_files(files, spec, models, args.batch_size)
    if len(errors) == len(names):
        print(f"error: {nothing_read(names, errors)}", file=sys.stderr)
        return 2
    write_csv(args.out, names, probs, errors, [str(c) for c in spec["classes"]])
    print(f"wrote {args.out}: {len(names) - len(errors)} images predicted, {len(errors)} unreadable")
    for name, why in list(errors.items())[:20]:
        print(f"  unreadable: {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
