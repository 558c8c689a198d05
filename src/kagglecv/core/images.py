"""Reading images people actually have: any mode (CMYK, RGBA, palette, 16-bit, ...), EXIF-rotated,
truncated or not an image at all. One place decides what counts as a real image, so the scrape and
folder sources keep and drop the same things, and one place hashes images (`measure`), so `make data`,
`inspect` and the holdout group the same pictures.

    check = check_image(path.read_bytes(), min_size=64)   # .status == "kept" or why not
    export_rgb(path, out_dir / "cat_01")                  # -> out_dir/cat_01.jpg|.png, plain RGB
    m = measure(path.read_bytes())                        # size, mode, hashes: one (draft) decode

Decoding is bounded before any decoder runs: the pixel count comes from the header (PIL opens
lazily; a TIFF only OpenCV reads has its header read here), OpenCV's own cap is the same number
(kagglecv/__init__.py sets it before cv2 loads), and at most DECODE_BUDGET pixels are decoded at
once in a process, however many threads decode.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kagglecv import MAX_PIXELS  # set as OpenCV's cap too, before cv2 was imported

# Extensions the folder source and the layouts treat as images; anything else is reported, not read.
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# Pixels being decoded at once in this process (a decode peaks near 25 bytes a pixel): one image at
# the cap, or many ordinary ones side by side.
DECODE_BUDGET = MAX_PIXELS
ORIENTATION = 0x0112  # EXIF tag
TOO_MANY_PIXELS = "too_many_pixels"


@dataclass
class ImageCheck:
    """What `check_image` learned: `status` is "kept" or the reason to drop the image."""

    status: str
    detail: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    sha256: str = ""
    phash: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "kept"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency goes onto white (what a viewer shows)."""
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
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


class PixelBudget:
    """At most `limit` pixels being decoded at once across threads; an image over the limit waits
    until it is alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_use = limit, 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


BUDGET = PixelBudget(DECODE_BUDGET)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


_TIFF_INTS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}  # (S)BYTE, (S)SHORT, (S)LONG


def tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a TIFF's first IFD, without decoding; None where the header is unreadable.
    A tag given twice counts as libtiff (which OpenCV decodes with) counts it: the first entry, the
    others ignored; so a small first ImageWidth cannot pass the cap ahead of a huge second one."""
    try:
        order = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        found: dict[int, int | None] = {}
        for k in range(count):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * k)
            if tag in (256, 257) and tag not in found:  # ImageWidth, ImageLength
                fmt = _TIFF_INTS.get(kind)
                found[tag] = struct.unpack_from(order + fmt, value)[0] if fmt and n == 1 else None
        width, height = found[256], found[257]
    except (struct.error, KeyError):
        return None
    return None if width is None or height is None else (width, height)


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise Image.DecompressionBombError(f"{width}x{height} pixels")


def _cv2_fallback(data: bytes) -> Image.Image:
    """Some TIFFs PIL cannot decode (e.g. 16-bit RGB) OpenCV can; EXIF orientation included. The
    size is read from the header first: no decoder runs on a picture over the cap."""
    size = tiff_size(data)
    if size is None:
        raise OSError("PIL cannot read this TIFF and its header gives no size")
    _check_pixels(*size)
    import cv2  # only this fallback needs it; the cap was set before any import of cv2

    with BUDGET.hold(size[0] * size[1]):
        try:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV 5 raises where 4 returned None
            arr = None
        if arr is None:
            raise OSError("neither PIL nor OpenCV can decode it")
        return Image.fromarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), "RGB")


def _open(data: bytes) -> Image.Image:
    """PIL's lazy open: the header only, the pixel count checked before anything is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
        img = Image.open(io.BytesIO(data))
    _check_pixels(img.width, img.height)
    return img


def _load(img: Image.Image) -> None:
    with BUDGET.hold(img.width * img.height), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img.load()  # a truncated file fails here, not later in training


def decode(data: bytes) -> tuple[Image.Image, str, str, bool]:
    """Fully decode image bytes -> (upright RGB image, format, original mode, needs_rewrite).

    `needs_rewrite` is False only where the file as it is already reads as this very RGB picture
    (an upright 8-bit RGB JPEG or PNG), so it may be copied instead of re-encoded.
    Raises OSError / ValueError / Image.DecompressionBombError for anything that is not a whole image.
    """
    try:
        img = _open(data)
        fmt, mode = img.format or "", img.mode
        _load(img)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        if data[:4] not in TIFF_MAGIC:  # only TIFF gets a second opinion
            raise OSError(str(e) or type(e).__name__) from None
        return _cv2_fallback(data), "TIFF", "?", True
    orientation = img.getexif().get(ORIENTATION, 1)
    upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
    with BUDGET.hold(img.width * img.height):
        rgb = _to_rgb(upright)
    plain = fmt in ("JPEG", "PNG") and mode == "RGB" and orientation in (None, 1)
    if plain and fmt == "PNG" and img.info.get("transparency") is not None:
        plain = False
    return rgb, fmt, mode, not plain


SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", *TIFF_MAGIC)


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


TINY = 64  # shorter side (px) below which only exact copies count as duplicates


def content_hash(rgb: Image.Image) -> str:
    """A hash of the decoded pixels (and size): the same picture saved twice, or re-encoded losslessly."""
    return hashlib.sha1(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


def similarity_hash(rgb: Image.Image) -> str:
    """16 hex digits for near-duplicate matching: the perceptual hash, except for images under TINY
    px, whose 8x8 perceptual hash can't tell look-alikes from copies. Those get 64 bits of their
    content hash, which only an exact copy shares (two different images land within a few bits of
    each other with odds of about 1 in 10^13)."""
    return phash_hex(rgb) if min(rgb.size) >= TINY else content_hash(rgb)[:16]


def phash_hex(rgb: Image.Image) -> str:
    import imagehash  # only the scrape/folder sources and inspect hash; training never needs it

    return str(imagehash.phash(rgb))


# JPEG draft mode decodes at 1/2..1/8 scale (DCT scaling) and only the luma the perceptual hash
# reads, several times faster; it still reads the whole entropy-coded stream, so a truncated file fails.
DRAFT_SIDE = 64


@dataclass(frozen=True)
class Measure:
    """What `make data` records per image (data/<comp>/images.csv): the upright size, the original
    mode, the similarity hash and, for images under TINY px, the content hash of the decoded pixels."""

    width: int
    height: int
    mode: str
    phash: str
    content: str = ""
    format: str = ""


def measure(data: bytes) -> Measure:
    """Decode once, as cheaply as the hashes allow (JPEGs of TINY px or more in draft mode); raises
    like `decode` for anything that is not a whole image."""
    try:
        img = _open(data)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError):
        img = None  # decode() gives TIFFs their second opinion, or raises
    if img is None or img.format != "JPEG" or min(img.size) < TINY:
        rgb, fmt, mode, _ = decode(data)
        content = content_hash(rgb) if min(rgb.size) < TINY else ""
        return Measure(rgb.width, rgb.height, mode, similarity_hash(rgb), content, fmt)
    mode, (width, height) = img.mode, img.size
    orientation = img.getexif().get(ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):  # rotated a quarter turn: width and height swap
        width, height = height, width
    img.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
    _load(img)
    upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
    return Measure(width, height, mode, phash_hex(upright), format="JPEG")


def measure_file(path: Path) -> tuple:
    """(bytes, mtime_ns, width, height, mode, phash, content) of one image file; width 0 when it
    does not decode (mode TOO_MANY_PIXELS when over the cap). A module-level function of this light
    module: worker processes run it."""
    try:
        st = path.stat()
    except OSError:  # gone since it was listed (deleted by hand): as good as unreadable
        return 0, 0, 0, 0, "", "", ""
    try:
        m = measure(path.read_bytes())
    except Image.DecompressionBombError:
        return st.st_size, st.st_mtime_ns, 0, 0, TOO_MANY_PIXELS, "", ""
    except Exception:  # noqa: BLE001 -- a damaged file raises all sorts (struct.error, EOFError, ...)
        return st.st_size, st.st_mtime_ns, 0, 0, "", "", ""
    return st.st_size, st.st_mtime_ns, m.width, m.height, m.mode, m.phash, m.content


def check_image(data: bytes, min_size: int = 32) -> ImageCheck:
    """Decide whether bytes are a real image worth keeping; hash it either way if it decodes."""
    if not data:
        return ImageCheck("empty", "0 bytes")
    sha = sha256_bytes(data)
    head = data[:512].lstrip().lower()
    try:
        m = measure(data)  # the same decode and hash as `make data` and `inspect`
    except Image.DecompressionBombError as e:
        return ImageCheck(TOO_MANY_PIXELS, str(e), sha256=sha)
    except Exception as e:  # noqa: BLE001 -- damaged files raise all sorts (struct.error, EOFError, ...)
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg", b"{")):
            return ImageCheck("not_an_image", "HTML/XML/JSON, not image data", sha256=sha)
        if _looks_like_image(data):  # an image format's signature, but the pixels will not decode
            return ImageCheck("corrupt", str(e)[:120], sha256=sha)
        return ImageCheck("not_an_image", "unrecognised data", sha256=sha)
    check = ImageCheck(
        "kept", width=m.width, height=m.height, format=m.format, mode=m.mode, sha256=sha, phash=m.phash
    )
    if min(m.width, m.height) < min_size:
        check.status, check.detail = "too_small", f"{m.width}x{m.height} < {min_size}px"
    return check


def export_rgb(src: Path, dst_stem: Path) -> Path:
    """Write `src` as a plain RGB image at `dst_stem` + .jpg/.png that OpenCV reads exactly as PIL
    shows it: upright RGB JPEG/PNG files are linked (or copied) untouched, the rest re-encoded
    (JPEG sources as JPEG q95, lossless ones as PNG). Returns the path written."""
    data = src.read_bytes()
    rgb, fmt, _, rewrite = decode(data)
    ext = ".jpg" if fmt == "JPEG" else ".png"
    dst = dst_stem.with_name(dst_stem.name + ext)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not rewrite:
        try:
            dst.hardlink_to(src)  # raw/ is never modified, so sharing its bytes is safe
        except OSError:
            shutil.copyfile(src, dst)
    elif ext == ".jpg":
        rgb.save(dst, "JPEG", quality=95)
    else:
        rgb.save(dst, "PNG")
    return dst


def hash_ints(hexes: list[str]) -> np.ndarray:
    """64-bit perceptual hashes (hex strings) as uint64, for vectorised Hamming distances."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(hashes: np.ndarray, one: int | np.uint64) -> np.ndarray:
    return np.bitwise_count(hashes ^ np.uint64(one)).astype(np.int64)


def near_groups(hashes: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """Group ids so that images within `max_distance` bits of each other (transitively) share one:
    union-find over all close pairs, compared block by block to keep memory flat."""
    n = len(hashes)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, block):
        rows = hashes[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        for a, b in zip(*np.nonzero(dist <= max_distance), strict=True):
            i, j = start + int(a), int(b)
            if i < j:
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(n)])


class Deduper:
    """Keeps the first of every exact (sha256) or near (phash within `near_distance` bits) duplicate,
    across all classes seen so far. `near_distance < 0` turns near-duplicate dropping off."""

    def __init__(self, near_distance: int = 4) -> None:
        self.near_distance = near_distance
        self.by_sha: dict[str, str] = {}
        self.hashes: list[int] = []
        self.names: list[str] = []
        self._arr = np.zeros(0, dtype=np.uint64)

    def check(self, sha: str, phash: str) -> tuple[str, str]:
        """("kept", "") or ("exact_duplicate" | "near_duplicate", name of the image it repeats)."""
        if sha in self.by_sha:
            return "exact_duplicate", self.by_sha[sha]
        if self.near_distance >= 0 and len(self.hashes):
            if len(self._arr) != len(self.hashes):
                self._arr = np.array(self.hashes, dtype=np.uint64)
            dist = hamming(self._arr, int(phash, 16))
            best = int(dist.argmin())
            if dist[best] <= self.near_distance:
                return "near_duplicate", self.names[best]
        return "kept", ""

    def add(self, sha: str, phash: str, name: str) -> None:
        self.by_sha[sha] = name
        self.hashes.append(int(phash, 16))
        self.names.append(name)
