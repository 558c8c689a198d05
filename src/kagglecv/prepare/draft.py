"""A first competitions/<slug>.yaml for a Kaggle competition kagglecv has no file for yet.

    kagglecv data some-new-competition    # no competitions/some-new-competition.yaml -> a draft

The files are downloaded into data/<slug>/raw/ as usual; then what came is read the way a person
would: the sample submission's columns (id, one label column or one column per class) and values
(class names, indices or probabilities), a CSV of pixel rows, image folders per class, a CSV whose
ids match the training images plus a label-like column (or one-hot class columns), or a class word at
the start of each file name; a JSON that maps every class code to a name (cassava's label map) gives
submission.classes. Every guess that could be wrong is listed at the top of the file, marked CHECK.
A YAML that exists already is never replaced (`--draft` on it writes <slug>.draft.yaml beside it
and lists what differs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml
from rich.markup import escape

from kagglecv.core.competition import (
    COMPETITIONS_DIR,
    Competition,
    Submission,
    load_competition,
    parse_competition,
    similar_competition,
)
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.prepare.layout import IMAGE_EXTS, fetch_raw

LABEL_WORDS = ("label", "class", "target", "category", "breed", "species", "has_", "is_", "y")
NAME_PATTERN = r"^([A-Za-z]+)[._-]"  # "cat.0.jpg" -> cat


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]


def _image_dirs(raw: Path) -> list[Path]:
    """Folders that hold images directly, shallowest first."""
    dirs = [d for d in [raw, *raw.rglob("*")] if d.is_dir() and _images(d)]
    return sorted(dirs, key=lambda d: (len(d.relative_to(raw).parts), str(d)))


def _rel(path: Path, raw: Path) -> str:
    return path.relative_to(raw).as_posix() or "."


def _sample_submission(raw: Path, slug: str) -> Path:
    found = sorted(
        (p for p in raw.rglob("*.csv") if re.search(r"sample.?submission", p.name, re.I)),
        key=lambda p: len(p.parts),
    )
    if not found:
        raise UserError(
            f"{raw}/ has no sample submission CSV, so kagglecv cannot tell the submission format; "
            f"write competitions/{slug}.yaml by hand (see the shipped ones)"
        )
    return found[0]


def _label_column(frame: pd.DataFrame, exclude: str) -> str | None:
    """The label-like column: a telling name, else the one with the fewest distinct values."""
    candidates = [c for c in frame.columns if c != exclude and frame[c].nunique() <= max(2, len(frame) // 2)]
    for c in candidates:
        if any(w in c.lower() for w in LABEL_WORDS):
            return c
    return min(candidates, key=lambda c: frame[c].nunique()) if candidates else None


def _pixels_layout(raw: Path, csvs: list[Path], checks: list[str]) -> tuple[dict, list[str]] | None:
    """A CSV of pixel rows (pixel0, pixel1, ... and one label column), as digit-recognizer ships."""
    for path in csvs:
        head = pd.read_csv(path, nrows=5)
        pixels = [c for c in head.columns if re.fullmatch(r"pixel\d+", str(c))]
        if len(pixels) >= 64 and len(head.columns) == len(pixels) + 1:
            label = next(c for c in head.columns if c not in pixels)
            test = next((p for p in csvs if p != path and "test" in p.name.lower()), None)
            classes = sorted(pd.read_csv(path, usecols=[label])[label].astype(str).unique())
            checks.append(f"layout: pixel rows in {path.name}, label column '{label}'")
            return {
                "kind": "csv_pixels",
                "train_csv": _rel(path, raw),
                "test_csv": _rel(test, raw) if test else "test.csv",
                "label_column": label,
                "id_start": 1,
            }, classes
    return None


def _labels_layout(
    raw: Path, csvs: list[Path], folders: tuple[Path, Path | None], checks: list[str]
) -> tuple[dict, list[str]] | None:
    """A CSV whose ids match the training images' names, with a label-like column."""
    train, test = folders
    images = _images(train)
    names, stems = {p.name for p in images}, {p.stem for p in images}
    for path in csvs:
        frame = pd.read_csv(path)
        for col in frame.columns:
            ids = frame[col].astype(str)
            if ids.isin(names).mean() > 0.9 or ids.isin(stems).mean() > 0.9:
                one_hot = _one_hot_columns(frame, col)
                label = None if one_hot else _label_column(frame, col)
                if label is None and not one_hot:
                    continue
                layout = {"kind": "csv_labels", "labels_csv": _rel(path, raw), "id_column": col}
                if one_hot:
                    layout["label_columns"] = one_hot
                    checks.append(f"layout: one-hot labels in {path.name} ({', '.join(one_hot)}), id '{col}'")
                else:
                    layout["label_column"] = label
                    checks.append(f"layout: labels from {path.name}, id '{col}', label '{label}'")
                layout["train_dir"] = _rel(train, raw)
                layout["test_dir"] = _rel(test, raw) if test else "test"
                if not ids.isin(names).mean() > 0.9:
                    layout["image_ext"] = images[0].suffix
                return layout, one_hot or sorted(frame[label].astype(str).unique())
    return None


def _one_hot_columns(frame: pd.DataFrame, exclude: str) -> list[str] | None:
    """The columns besides the id when they are one-hot classes: two or more, each 0 or 1, and
    exactly one 1 in every row (plant-pathology-2020's healthy,multiple_diseases,rust,scab)."""
    columns = [c for c in frame.columns if c != exclude]
    values = frame[columns].apply(pd.to_numeric, errors="coerce")
    if len(columns) < 2 or not values.isin([0, 1]).all().all() or not (values.sum(axis=1) == 1).all():
        return None
    return [str(c) for c in columns]


def _guess_layout(raw: Path, sample_path: Path, checks: list[str]) -> tuple[dict, list[str] | None]:
    """(layout dict, class names or None) from what the download holds."""
    csvs = [p for p in raw.rglob("*.csv") if p != sample_path]
    found = _pixels_layout(raw, csvs, checks)
    if found:
        return found
    dirs = _image_dirs(raw)
    train = next((d for d in dirs if "train" in _rel(d, raw).lower()), None)
    test = next((d for d in dirs if "test" in _rel(d, raw).lower()), None)
    if train is not None and train.parent.name.lower().startswith("train") and train.parent != raw:
        # train/<class>/*.png: every image folder under the train folder is a class
        root = train.parent
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images(d))
        if len(classes) >= 2:
            checks.append(f"layout: one folder per class under {_rel(root, raw)}/ ({len(classes)} classes)")
            return {
                "kind": "class_folders",
                "train_dir": _rel(root, raw),
                "test_dir": _rel(test, raw),
            }, classes
    if train is None and dirs:  # one folder for the train and the test images (plant-pathology-2020)
        both = max(dirs, key=lambda d: len(_images(d)))
        return _labels_layout(raw, csvs, (both, both), checks) or ({"kind": "TODO"}, None)
    if train is None:
        return {"kind": "TODO"}, None
    found = _labels_layout(raw, csvs, (train, test), checks)
    if found:
        return found
    images = _images(train)
    words = [re.match(NAME_PATTERN, p.name) for p in images]
    if all(words):
        classes = sorted({m.group(1) for m in words})
        if 2 <= len(classes) <= max(2, len(images) // 5):
            checks.append(f"layout: class = first word of the file name ({', '.join(classes[:5])})")
            return {
                "kind": "label_in_name",
                "train_dir": _rel(train, raw),
                "pattern": NAME_PATTERN,
                "test_dir": _rel(test, raw) if test else "test",
            }, classes
    return {"kind": "TODO", "train_dir": _rel(train, raw)}, None


def _guess_submission(sample: pd.DataFrame, classes: list[str] | None, checks: list[str]) -> tuple[dict, str]:
    """(submission dict, metric)."""
    id_col, *values = [str(c) for c in sample.columns]
    sub: dict = {"id_column": id_col}
    ids = sample[id_col].astype(str)
    sub["id_is"] = "name" if ids.str.lower().str.endswith(tuple(IMAGE_EXTS)).all() else "stem"
    if len(values) > 1:
        sub["kind"] = "class_probabilities"
        checks.append(
            f"submission: one probability column per class ({len(values)} columns); metric log_loss"
        )
        return sub, "log_loss"
    column = sample[values[0]]
    sub["label_columns"] = values
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all() and (numeric % 1 != 0).any():
        sub["kind"] = "probability"
        sub["positive_class"] = (classes or ["1"])[-1]
        checks.append(
            f"submission: '{values[0]}' holds P({sub['positive_class']}) (sample values like {column.iloc[0]}); "
            "metric roc_auc or log_loss? see the competition's Evaluation page"
        )
        return sub, "roc_auc"
    if numeric.notna().all() and classes and not all(c.isdigit() for c in classes):
        sub["kind"] = "class_index"
        sub["classes"] = classes
        checks.append(
            f"submission: '{values[0]}' holds a class index in the order {classes[:5]}; metric accuracy"
        )
        return sub, "accuracy"
    sub["kind"] = "class_name"
    checks.append(f"submission: '{values[0]}' holds the class name; metric accuracy")
    return sub, "accuracy"


def _label_map(raw: Path, classes: list[str] | None, checks: list[str]) -> list[str] | None:
    """The keys of a small JSON beside the data that names every training class (cassava's
    label_num_to_disease_map.json: {"0": "Cassava Bacterial Blight (CBB)", ...}), in its order."""
    if not classes:
        return None
    for path in sorted(raw.rglob("*.json"), key=lambda p: (len(p.parts), str(p))):
        try:
            names = json.loads(path.read_bytes()) if path.stat().st_size < 1_000_000 else None
        except (OSError, ValueError):
            continue
        if (
            isinstance(names, dict)
            and set(classes) <= set(names)
            and all(isinstance(v, str) for v in names.values())
        ):
            pairs = ", ".join(f"{k} = {v}" for k, v in list(names.items())[:5])
            checks.append(
                f"submission.classes: the keys of {_rel(path, raw)} ({pairs}); no other label is taken"
            )
            return list(names)
    return None


def _check_slug(slug: str, allow_similar: bool, root: Path) -> None:
    """A slug Kaggle could have, and not a typo of a known one (a typo must not start a download)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", slug):
        raise UserError(f"unknown competition '{slug}': a Kaggle slug has only letters, digits and '-'")
    if slug != slug.lower():  # Kaggle slugs are lower-case: never download for a capitalised one
        close = similar_competition(slug, root, cutoff=0.8) or slug.lower()
        raise UserError(
            f"unknown competition '{slug}'. Did you mean '{close}'? (Kaggle slugs are lower-case)"
        )
    close = similar_competition(slug, root, cutoff=0.8)
    if close and close != slug and not allow_similar:
        raise UserError(
            f"unknown competition '{slug}'. Did you mean '{close}'? (If '{slug}' is a new Kaggle "
            f"competition, `kagglecv data -c {slug} --draft` downloads it and drafts its YAML)"
        )


def _draft_text(slug: str, raw: Path) -> tuple[str, dict, list[str]]:
    """(the YAML text with its CHECK header, the spec, the checks) from the downloaded files."""
    checks: list[str] = []
    sample_path = _sample_submission(raw, slug)
    layout, classes = _guess_layout(raw, sample_path, checks)
    if sample_path.name != "sample_submission.csv" or sample_path.parent != raw:
        layout["sample_submission"] = _rel(sample_path, raw)
    submission, metric = _guess_submission(pd.read_csv(sample_path, nrows=50), classes, checks)
    if submission.get("kind") == "class_name" and (named := _label_map(raw, classes, checks)):
        submission["classes"] = named
    checks.append("hflip: true (may a mirrored image keep its class?), vflip: false")
    spec = {
        "slug": slug,
        "title": slug.replace("-", " ").title(),
        "url": f"https://www.kaggle.com/competitions/{slug}",
        "source": {"kind": "kaggle"},
        "layout": layout,
        "submission": submission,
        "metric": metric,
        "n_folds": 5,
        "hflip": True,
        "vflip": False,
        "notes": "DRAFT written by kagglecv from the downloaded files: check the CHECK lines above",
    }
    header = [f"# DRAFT for {slug}, written by `kagglecv data` from the files in data/{slug}/raw/.", "#"]
    header += [f"# CHECK {c}" for c in checks]
    if layout["kind"] == "TODO":
        header.append("# TODO layout.kind: one of csv_pixels, label_in_name, csv_labels, class_folders")
    header.append("# Compare with the competition's Data and Evaluation pages. After changing layout:")
    header.append(f"# rm data/{slug}/prepared.json && make data COMP={slug}   (lays out again, no download)")
    return "\n".join(header) + "\n" + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), spec, checks


def _flat(value, prefix: str = "") -> dict[str, object]:
    """{'layout.kind': 'class_folders', ...}: nested mappings as dotted keys."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, object] = {}
    for key, inner in value.items():
        out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(yours: dict, draft: dict, limit: int = 20) -> list[str]:
    """Key by key, what the draft would change in your YAML (its notes aside)."""
    mine, new = _flat(yours), _flat(draft)
    keys = [k for k in dict.fromkeys([*mine, *new]) if k != "notes" and mine.get(k) != new.get(k)]
    lines = [f"{k}: yours {mine.get(k, '(not set)')!r}, draft {new.get(k, '(not set)')!r}" for k in keys]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _beside(path: Path, text: str, spec: dict) -> Path:
    """Write the draft as <slug>.draft.yaml next to the user's YAML, which is never replaced, and
    say what differs."""
    out = path.with_name(f"{path.stem}.draft.yaml")
    atomic_write(out, lambda tmp: tmp.write_text(text))
    try:  # the draft must at least be a valid competition file (checked as the YAML it would replace)
        parse_competition(yaml.safe_load(text), path)
    except UserError as e:
        raise UserError(str(e).replace(str(path), str(out), 1)) from None
    try:
        yours = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        yours = {}
    diff = differences(yours if isinstance(yours, dict) else {}, spec)
    console.print(
        f"[yellow]kept your {escape(str(path))}[/]; wrote the new DRAFT beside it, {escape(str(out))}: "
        + ("it differs in:" if diff else "it says the same."),
        soft_wrap=True,
    )
    for line in diff:
        console.print(f"  {escape(line)}", soft_wrap=True)
    return out


def draft_competition(slug: str, allow_similar: bool = False, root: Path | None = None) -> Path:
    """Download `slug` from Kaggle and draft competitions/<slug>.yaml from what came. An existing
    YAML is never replaced: the draft goes beside it as <slug>.draft.yaml, with what differs."""
    root = root or COMPETITIONS_DIR
    _check_slug(slug, allow_similar, root)
    path = root / f"{slug}.yaml"
    existing = path.exists()
    stub = Competition(
        slug=slug,
        title=slug,
        source={"kind": "kaggle"},
        layout={"kind": "TODO"},
        submission=Submission(id_column="id"),
        metric="accuracy",
        path=path,
    )
    if existing:
        console.print(f"drafting {slug} again from its Kaggle files; your {path} is kept as it is")
    else:
        console.print(f"no {path} yet: downloading {slug} from Kaggle to draft one")
    try:
        raw = fetch_raw(stub)
    except UserError as e:
        if existing:
            raise
        raise UserError(f"unknown competition '{slug}' (no {path}), and Kaggle could not help: {e}") from None
    text, spec, checks = _draft_text(slug, raw)
    root.mkdir(exist_ok=True)
    if existing:
        return _beside(path, text, spec)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    console.print(f"[yellow]wrote a DRAFT {path}[/]: please check it against {spec['url']}")
    for c in checks:
        console.print(f"  CHECK {c}", soft_wrap=True)
    if spec["layout"]["kind"] == "TODO":
        raise UserError(
            f"{path}: could not tell how the images in data/{slug}/raw/ map to classes; fill in "
            f"layout (see the other files in {root}/) and rerun `make data COMP={slug}`"
        )
    load_competition(slug, root)  # the draft must at least be a valid competition file
    return path
