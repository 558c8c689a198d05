"""What the prepared data holds, before you train on it.

    make inspect [COMP=bjj-vs-aikido]        # kagglecv inspect --comp bjj-vs-aikido

Per-class counts (train, holdout) with a warning when classes are unbalanced; image sizes; what the
source dropped and why (raw/manifest.csv, where the source wrote one); near-duplicate groups --
flagging any that span two classes (a label conflict) or train and test (leakage: the test score
would be flattered); and a contact sheet, data/<comp>/inspect/contact_sheet.png, with sample
images of every class, to eyeball wrong or odd images at a glance.

Sizes and hashes come from data/<comp>/images.csv, written by `make data`'s one decode of every
image (verify.py); only images added or changed since (or data prepared before images.csv existed)
are decoded here, and cached in data/<comp>/inspect/hashes.csv.

Images under TINY pixels on the shorter side are matched as exact copies only (same decoded
pixels): the 64-bit perceptual hash of a small, often upscaled picture (28-px digits) is nearly the
same for different images of one shape, so "within a few bits" would group distinct images.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps
from rich.markup import escape
from rich.table import Table

from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.images import TINY, decode, hash_ints, near_groups
from kagglecv.prepare.folds import escaping_image
from kagglecv.prepare.holdout import GROUP_DISTANCE
from kagglecv.prepare.layout import FOLDS, IMAGE_EXTS, read_prepared
from kagglecv.prepare.verify import cached_or_measured, read_cache, read_images_csv

IMBALANCE_RATIO = 3.0  # largest class / smallest class above this earns a warning
THUMB = 96
SHOW_GROUPS = 5
SHOW_MEMBERS = 6


def _image_table(comp: Competition) -> pd.DataFrame:
    """image (relative to data/<comp>/), label ('' where unknown), split (train | test)."""
    root = comp.data_dir
    folds = pd.read_csv(root / FOLDS, dtype=str)
    escaping = escaping_image(root, folds["image"])
    if escaping is not None:
        raise UserError(
            f"{root / FOLDS}: image {escaping!r} is not a path inside {root}/; delete folds.csv and run "
            f"`make data COMP={comp.slug}` to split again"
        )
    rows = [(img, lab, "train") for img, lab in zip(folds["image"], folds["label"], strict=True)]
    truth: dict[str, str] = {}
    solution = root / "solution.csv"
    if solution.exists():
        sol = pd.read_csv(solution, dtype=str)
        truth = dict(zip(sol[comp.submission.id_column], sol["label"], strict=True))
    key = (lambda p: p.stem) if comp.submission.id_is == "stem" else (lambda p: p.name)
    test_dir = root / "test"
    if test_dir.exists():
        for p in sorted(test_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                rows.append((p.relative_to(root).as_posix(), truth.get(key(p), ""), "test"))
    return pd.DataFrame(rows, columns=["image", "label", "split"])


def measure_all(comp: Competition, table: pd.DataFrame) -> pd.DataFrame:
    """Sizes and hashes: from data/<comp>/images.csv (written by `make data`'s one decode) or
    inspect/hashes.csv where the file's size and mtime still match, else measured now (images added
    or changed since, or data prepared by an older kagglecv); all cached in inspect/hashes.csv."""
    root = comp.data_dir
    cache_path = root / "inspect" / "hashes.csv"
    caches = [read_images_csv(root), read_cache(cache_path)]
    results, _ = cached_or_measured(root, table["image"], caches, "measuring images")
    out = table.assign(
        bytes=[int(r[0]) for r in results],
        mtime=[int(r[1]) for r in results],
        width=[int(r[2]) for r in results],
        height=[int(r[3]) for r in results],
        phash=[r[4] for r in results],
        content=[r[5] for r in results],
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["image", "bytes", "mtime", "width", "height", "phash", "content"]
    atomic_write(cache_path, lambda path: out[columns].to_csv(path, index=False))
    return out


def duplicate_groups(hashed: pd.DataFrame, distance: int) -> np.ndarray:
    """A group id per row: perceptual hashes within `distance` bits (transitively) for images of TINY
    px or more on the shorter side; identical decoded pixels only for smaller ones."""
    groups = np.arange(len(hashed))
    tiny = (np.minimum(hashed["width"], hashed["height"]) < TINY).to_numpy()
    big = np.flatnonzero(~tiny)
    if len(big):
        groups[big] = big[near_groups(hash_ints(hashed["phash"].iloc[big].tolist()), distance)]
    first: dict[str, int] = {}
    for i in np.flatnonzero(tiny):
        groups[i] = first.setdefault(hashed["content"].iloc[i], i)
    return groups


def contact_sheet(comp: Competition, table: pd.DataFrame, samples: int, seed: int = 0) -> Path:
    """One row per class: the class name, then `samples` random training images as thumbnails."""
    root = comp.data_dir
    train = table[(table["split"] == "train") & (table["width"] > 0)]
    classes = sorted(train["label"].unique())
    label_w = 140
    sheet = Image.new("RGB", (label_w + samples * (THUMB + 4) + 4, len(classes) * (THUMB + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    rng = np.random.default_rng(seed)
    for r, cls in enumerate(classes):
        paths = train[train["label"] == cls]["image"].to_numpy()
        pick = rng.choice(paths, size=min(samples, len(paths)), replace=False)
        y = 4 + r * (THUMB + 4)
        n = int((train["label"] == cls).sum())
        draw.text((6, y + THUMB // 2 - 12), f"{cls[:18]}\n({n})", fill="black")
        for c, rel in enumerate(pick):
            img = decode((root / rel).read_bytes())[0]
            thumb = ImageOps.pad(img, (THUMB, THUMB), color=(235, 235, 235))
            sheet.paste(thumb, (label_w + c * (THUMB + 4), y))
    out = root / "inspect" / "contact_sheet.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, sheet.save)
    return out


def inspect_data(comp: Competition, samples: int = 8, distance: int | None = None) -> dict:
    """Print what data/<comp>/ holds and write the contact sheet; returns the figures printed."""
    read_prepared(comp)
    if samples < 1:
        raise UserError("--samples must be 1 or more")
    distance = int(comp.layout.get("group_distance", GROUP_DISTANCE)) if distance is None else distance
    table = measure_all(comp, _image_table(comp))
    figures: dict = {}
    figures.update(report_classes(comp, table))
    figures.update(report_sizes(table))
    figures.update(report_dropped(comp))
    figures.update(report_duplicates(table[table["width"] > 0], distance))
    sheet = contact_sheet(comp, table, samples)
    figures["contact_sheet"] = str(sheet)
    console.print(f"[green]✓[/] contact sheet: {escape(str(sheet))}")
    return figures


def report_classes(comp: Competition, table: pd.DataFrame) -> dict:
    """Images per class (train, holdout) with their sizes; a warning when classes are unbalanced."""
    counts = Table(title=f"{escape(comp.slug)}: images per class")
    for col in ("class", "train", "holdout", "median size", "smallest side", "largest side"):
        counts.add_column(col, justify="left" if col == "class" else "right", no_wrap=col == "class")
    ok = table[table["width"] > 0]
    per_class = {}
    for cls in sorted(set(table.loc[table["split"] == "train", "label"])):
        part = ok[ok["label"] == cls]
        n_train = int(((table["label"] == cls) & (table["split"] == "train")).sum())
        n_test = int(((table["label"] == cls) & (table["split"] == "test")).sum())
        per_class[cls] = n_train
        short = np.minimum(part["width"], part["height"])
        counts.add_row(
            escape(cls),
            str(n_train),
            str(n_test),
            f"{int(part['width'].median())}x{int(part['height'].median())}" if len(part) else "-",
            str(int(short.min())) if len(part) else "-",
            str(int(np.maximum(part["width"], part["height"]).max())) if len(part) else "-",
        )
    unlabelled = int(((table["split"] == "test") & (table["label"] == "")).sum())
    if unlabelled:
        counts.add_row("(test, unlabelled)", "", str(unlabelled), "", "", "")
    console.print(counts)
    ratio = max(per_class.values()) / max(1, min(per_class.values()))
    if ratio > IMBALANCE_RATIO:
        big, small = max(per_class, key=per_class.get), min(per_class, key=per_class.get)
        console.print(
            f"[yellow]warning:[/] classes are unbalanced: {escape(big)} has {per_class[big]} images, {escape(small)} "
            f"{per_class[small]} ({ratio:.1f}x); accuracy will flatter the model: add images or watch per-class errors"
        )
    return {"train_counts": per_class, "imbalance_ratio": ratio}


def report_sizes(table: pd.DataFrame) -> dict:
    """Images that no longer decode, and the quartiles of the shorter side."""
    broken = table[table["width"] == 0]["image"].tolist()
    figures: dict = {"undecodable": len(broken)}
    if broken:
        console.print(
            f"[red]{len(broken)} prepared image(s) do not decode[/], e.g. {escape(broken[0])}: rerun `make data FORCE=1`"
        )
    ok = table[table["width"] > 0]
    if len(ok):
        short = np.minimum(ok["width"], ok["height"])
        quart = np.percentile(short, [0, 25, 50, 75, 100]).astype(int)
        console.print(
            "image size (shorter side, px): min {} · 25% {} · median {} · 75% {} · max {}".format(*quart)
        )
        figures["short_side_quartiles"] = quart.tolist()
    return figures


def report_dropped(comp: Competition) -> dict:
    """What the source dropped and why (raw/manifest.csv, where the source wrote one)."""
    manifest = comp.data_dir / "raw" / "manifest.csv"
    if not manifest.exists():
        return {}
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    dropped = m[m["status"] != "kept"]
    reasons = Counter(dropped["status"])
    if reasons:
        console.print(
            f"dropped by the source ({len(dropped)} of {len(m)}): "
            + ", ".join(f"{r} {n}" for r, n in reasons.most_common())
            + " (raw/manifest.csv)"
        )
    else:
        console.print(f"dropped by the source: none of {len(m)}")
    return {"dropped": dict(reasons)}


def report_duplicates(ok: pd.DataFrame, distance: int) -> dict:
    """Near-duplicate groups, and those that leak across train/test or span two classes."""
    hashed = ok[ok["phash"] != ""].reset_index(drop=True)
    hashed = hashed.assign(group=duplicate_groups(hashed, distance))
    n_tiny = int((np.minimum(hashed["width"], hashed["height"]) < TINY).sum())
    multi = [part for _, part in hashed.groupby("group") if len(part) > 1]
    leaks = [part for part in multi if part["split"].nunique() > 1]
    conflicts = [part for part in multi if len(set(part["label"]) - {""}) > 1]
    if n_tiny == len(hashed):
        how = (
            f"exact copies only: every image is under {TINY} px on the shorter side, too small for the "
            "perceptual hash to tell look-alikes from copies"
        )
    elif n_tiny:
        how = f"perceptual hash within {distance} bits; exact copies only for the {n_tiny} images under {TINY} px"
    else:
        how = f"perceptual hash within {distance} bits"
    members = f", {sum(len(part) for part in multi)} images" if multi else ""
    console.print(f"near-duplicate groups ({how}): {len(multi)}{members}", soft_wrap=True)
    for title, found, color in (
        ("cross train/test (leakage: the test score is flattered)", leaks, "red"),
        ("span two classes (same picture, different labels)", conflicts, "yellow"),
    ):
        _print_groups(title, found, color)
    return {
        "exact_only_images": n_tiny,
        "near_duplicate_groups": len(multi),
        "leaking_groups": len(leaks),
        "conflicting_groups": len(conflicts),
    }


def _print_groups(title: str, found: list[pd.DataFrame], color: str) -> None:
    if not found:
        return
    console.print(f"[{color}]{len(found)} group(s) {title}[/]")
    for part in found[:SHOW_GROUPS]:
        names = [escape(f"{r.image} ({r.label or '?'})") for r in part.itertuples()]
        more = f" · … {len(names) - SHOW_MEMBERS} more" if len(names) > SHOW_MEMBERS else ""
        console.print("  " + " · ".join(names[:SHOW_MEMBERS]) + more, soft_wrap=True)
    if len(found) > SHOW_GROUPS:
        console.print(f"  … and {len(found) - SHOW_GROUPS} more group(s)")
