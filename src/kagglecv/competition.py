"""Competitions are data: `competitions/<slug>.yaml` says where the files come from, how they map to
labelled images, what the submission looks like and which metric scores it.

    spec = load_competition("digits-demo")
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from .config import check_fields, read_yaml
from .errors import UserError

COMPETITIONS_DIR = Path("competitions")
DATA_DIR = Path("data")
LAST_FILE = ".last-competition"

SOURCES = ("builtin", "kaggle", "scrape", "folder")
SUBMISSION_KINDS = ("class_name", "class_index", "probability", "class_probabilities")
METRICS = ("accuracy", "log_loss", "roc_auc", "f1_micro")
# layout: keys each layout kind reads (layout.py, holdout.py); `group_distance` also tunes `inspect`
_KAGGLE_LAYOUT = {"kind", "sample_submission", "group_distance"}
LAYOUT_KEYS: dict[str, set[str]] = {
    "csv_pixels": _KAGGLE_LAYOUT | {"train_csv", "test_csv", "label_column", "id_start"},
    "label_in_name": _KAGGLE_LAYOUT | {"train_dir", "test_dir", "pattern"},
    "csv_labels": _KAGGLE_LAYOUT
    | {"labels_csv", "id_column", "label_column", "image_ext", "train_dir", "test_dir"},
    "class_folders": _KAGGLE_LAYOUT | {"train_dir", "test_dir"},
    "holdout": {"kind", "holdout", "group_distance", "seed"},
}


@dataclass
class Submission:
    id_column: str
    label_columns: list[str] = field(default_factory=list)  # empty for class_probabilities
    kind: str = "class_name"  # class_name | class_index | probability | class_probabilities
    classes: list[str] | None = None  # class order for class_index (default: sorted class folders)
    positive_class: str | None = None  # for kind: probability
    id_is: str = "stem"  # the test image file's stem ("12") or full name ("12.jpg") is the id
    upload: bool = True  # false where Kaggle only takes submissions from notebooks


@dataclass
class Competition:
    slug: str
    title: str
    source: dict[str, Any]
    layout: dict[str, Any]
    submission: Submission
    metric: str
    n_folds: int = 5
    hflip: bool = True  # may images be mirrored left-right without changing their class?
    vflip: bool = False
    url: str | None = None
    notes: str | None = None
    path: Path | None = None

    @property
    def data_dir(self) -> Path:
        return DATA_DIR / self.slug

    @property
    def source_kind(self) -> str:
        return self.source["kind"]


def known_competitions(root: Path | None = None) -> list[str]:
    root = root or COMPETITIONS_DIR
    return sorted(p.stem for p in root.glob("*.yaml") if not p.name.endswith(".draft.yaml"))


def parse_competition(data: dict[str, Any], path: Path) -> Competition:
    where = str(path)
    for key in ("slug", "title", "source", "layout", "submission", "metric"):
        if key not in data:
            raise UserError(f"{where}: missing required key '{key}'")
    if not isinstance(data["submission"], dict) or "id_column" not in data["submission"]:
        raise UserError(f"{where}: submission needs at least 'id_column'")
    sub = data["submission"]
    data = check_fields(
        Competition, {k: v for k, v in data.items() if k != "submission"}, where, skip=("path",)
    )
    if data.get("n_folds", 5) < 2:
        raise UserError(f"{where}: n_folds must be at least 2 (k-fold needs a validation fold)")
    if not isinstance(data["source"], dict) or data["source"].get("kind") not in SOURCES:
        raise UserError(f"{where}: source.kind must be one of {', '.join(SOURCES)}")
    if "kind" not in data["layout"]:
        raise UserError(
            f"{where}: layout needs a 'kind' (see the README's layout kinds, or competitions/digits-demo.yaml)"
        )
    _check_layout_keys(data["layout"], where)
    submission = Submission(**check_fields(Submission, sub, f"{where}: submission"))
    if submission.kind not in SUBMISSION_KINDS:
        raise UserError(f"{where}: submission.kind must be one of {', '.join(SUBMISSION_KINDS)}")
    if submission.kind != "class_probabilities" and len(submission.label_columns) != 1:
        raise UserError(
            f"{where}: submission.label_columns needs exactly one column for kind {submission.kind}"
        )
    if submission.kind == "probability" and not submission.positive_class:
        raise UserError(f"{where}: submission.kind probability needs positive_class (the class it is P of)")
    if submission.id_is not in ("stem", "name"):
        raise UserError(f"{where}: submission.id_is must be 'stem' or 'name'")
    if data["metric"] not in METRICS:
        raise UserError(f"{where}: metric must be one of {', '.join(METRICS)}, got {data['metric']!r}")
    comp = Competition(**{**data, "submission": submission, "path": path})
    if comp.slug != path.stem:
        raise UserError(f"{where}: slug '{comp.slug}' differs from the file name '{path.stem}'")
    return comp


def similar_competition(slug: str, root: Path | None = None, cutoff: float = 0.6) -> str | None:
    """The known competition `slug` most likely means, ignoring case (Kaggle slugs are lower-case,
    so Dogs-Vs-Cats means dogs-vs-cats); None when nothing is close."""
    by_lower = {k.lower(): k for k in known_competitions(root)}
    close = difflib.get_close_matches(slug.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None


def _check_layout_keys(layout: dict[str, Any], where: str) -> None:
    """layout.kind is one kagglecv has, and every key is one that kind reads: a typo such as
    `holdot: 0.05` would otherwise be ignored for the default, silently."""
    kind = layout["kind"]
    if kind not in LAYOUT_KEYS:
        close = difflib.get_close_matches(str(kind), list(LAYOUT_KEYS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"{where}: layout.kind must be one of {', '.join(LAYOUT_KEYS)}, got {kind!r}.{hint}")
    valid = sorted(LAYOUT_KEYS[kind])
    for key in layout:
        if key not in LAYOUT_KEYS[kind]:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(
                f"{where}: layout: unknown key '{key}' for kind {kind}.{hint} Valid keys: {', '.join(valid)}"
            )


def load_competition(slug: str, root: Path | None = None) -> Competition:
    root = root or COMPETITIONS_DIR
    path = root / f"{slug}.yaml"
    known = known_competitions(root)
    # `slug not in known` too: on a case-insensitive disk Dogs-Vs-Cats.yaml "exists"
    if not path.exists() or slug not in known:
        close = similar_competition(slug, root)
        hint = f" Did you mean '{close}'?" if close else ""
        raise UserError(
            f"unknown competition '{slug}'.{hint} Known: {', '.join(known) or 'none'} (in {root}/)"
        )
    return parse_competition(read_yaml(path, "competition file"), path)


def remember_last(slug: str) -> None:
    DATA_DIR.mkdir(exist_ok=True)
    (DATA_DIR / LAST_FILE).write_text(slug + "\n")


def resolve_slug(slug: str | None, say=print) -> str:
    """An explicit slug, else the competition `make data` prepared last (and say so)."""
    if slug:
        return slug
    last = DATA_DIR / LAST_FILE
    if not last.exists():
        raise UserError("no competition given and none prepared yet: run `make data COMP=<slug>` first")
    slug = last.read_text().strip()
    say(
        f"using competition [bold]{escape(slug)}[/] (prepared last by `make data`; pass COMP=<slug> to choose)"
    )
    return slug
