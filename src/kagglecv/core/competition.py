"""Competitions are data: `competitions/<slug>.yaml` says where the files come from, how they map to
labelled images, what the submission looks like and which metric scores it.

    spec = load_competition("digits-demo")
    spec.layout_options          # CsvPixelsLayout(train_csv='train.csv', ...): typed, defaults filled

This module owns the competition spec and the registry of competition files; the typed options
block of every layout kind (LAYOUT_OPTIONS), built like every other options block with
config.build_spec (build_options names the file); and the rules for names that become folders:
`check_class_name` (every source and layout) and `inside` (every target path).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from kagglecv.core.config import build_spec, check_fields, read_yaml
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.names import check_name
from kagglecv.core.task import Task, parse_task

COMPETITIONS_DIR = Path("competitions")
DATA_DIR = Path("data")
LAST_FILE = ".last-competition"

SOURCES = ("builtin", "kaggle", "scrape", "folder")
SUBMISSION_KINDS = ("class_name", "class_index", "probability", "class_probabilities")
# Perceptual-hash bits within which two images count as the same picture (holdout groups, inspect);
# looser values chain unrelated look-alikes (plain backgrounds, tiny images) into huge groups.
GROUP_DISTANCE = 6
T = TypeVar("T")


# --- layout options: one typed block per layout kind (prepare/label_layouts.py and holdout.py read them) ---------


@dataclass
class KaggleFilesLayout:
    """Keys every layout of Kaggle-shaped files shares."""

    kind: str = ""
    sample_submission: str = "sample_submission.csv"
    group_distance: int = GROUP_DISTANCE  # tunes `make inspect`'s near-duplicate groups


@dataclass
class CsvPixelsLayout(KaggleFilesLayout):
    """Pixels in CSV rows (digit-recognizer): `label` then pixel0..pixelN."""

    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    label_column: str = "label"
    id_start: int = 1  # the first test row's id


@dataclass
class ImageFoldersLayout(KaggleFilesLayout):
    """Images in a train and a test folder (nested folders allowed)."""

    train_dir: str = "train"
    test_dir: str = "test"


@dataclass
class LabelInNameLayout(ImageFoldersLayout):
    """The class in the file name (dogs-vs-cats: train/cat.0.jpg): `pattern`'s first group."""

    pattern: str = r"^([^.]+)\."

    def __post_init__(self) -> None:
        try:
            groups = re.compile(self.pattern).groups
        except re.error as e:
            raise UserError(f"layout.pattern {self.pattern!r} is not a regular expression ({e})") from None
        if groups < 1:
            raise UserError(f"layout.pattern {self.pattern!r} needs a group (...) that captures the class")


@dataclass
class CsvLabelsLayout(ImageFoldersLayout):
    """The class in a CSV beside the images (dog-breed labels.csv: id,breed), in one column, or as
    one-hot columns (plant-pathology-2020: healthy,multiple_diseases,rust,scab; the class is the
    column holding the row's one 1)."""

    labels_csv: str = "train.csv"
    id_column: str = "id"
    label_column: str = ""  # empty: `label`, unless label_columns names the one-hot columns
    label_columns: list[str] = field(default_factory=list)
    image_ext: str = ""  # completes ids that lack one: id 0a1b + .jpg

    def __post_init__(self) -> None:
        if self.label_column and self.label_columns:
            raise UserError(
                "layout: give label_column (one column holds the class) or label_columns (one-hot "
                "columns, one per class), not both"
            )
        if len(self.label_columns) == 1 or len(set(self.label_columns)) < len(self.label_columns):
            raise UserError(
                f"layout.label_columns must name two or more different columns, got {self.label_columns}"
            )
        if not self.label_columns:
            self.label_column = self.label_column or "label"


@dataclass
class ClassFoldersLayout(ImageFoldersLayout):
    """One folder per class already (plant-seedlings: train/<Species>/*.png)."""


@dataclass
class HoldoutLayout:
    """Own classes (scrape/folder sources): train/ plus a stratified, labelled holdout."""

    kind: str = "holdout"
    holdout: float = 0.05  # the share of each class held out as the labelled test set
    group_distance: int = GROUP_DISTANCE  # near duplicates stay on one side and in one fold
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 0.5:
            raise UserError(f"layout.holdout must be a fraction between 0 and 0.5, got {self.holdout}")


LAYOUT_OPTIONS: dict[str, type] = {
    "csv_pixels": CsvPixelsLayout,
    "label_in_name": LabelInNameLayout,
    "csv_labels": CsvLabelsLayout,
    "class_folders": ClassFoldersLayout,
    "holdout": HoldoutLayout,
}


@dataclass
class Submission:
    id_column: str
    label_columns: list[str] = field(default_factory=list)  # empty for class_probabilities
    kind: str = "class_name"  # class_name | class_index | probability | class_probabilities
    # the only classes Kaggle takes (make data checks the labels); class_index: their order
    classes: list[str] | None = None  # default: the class folders, sorted
    positive_class: str | None = None  # for kind: probability
    id_is: str = "stem"  # the test image file's stem ("12") or full name ("12.jpg") is the id
    upload: bool = True  # false where Kaggle only takes submissions from notebooks
    code_competition: bool = (
        False  # Kaggle scores a notebook's output: make kernel PUSH=1, make submit KERNEL=1
    )
    notebook_minutes: int = 540  # the competition's notebook run-time limit (its Code Requirements)


@dataclass
class Competition:
    slug: str
    title: str
    source: dict[str, Any]
    layout: dict[str, Any]
    submission: Submission
    metric: str
    task: Task = field(default_factory=Task)  # single-label unless the file says otherwise
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

    @property
    def layout_options(self) -> Any:
        """The typed options of this competition's layout kind (one of LAYOUT_OPTIONS' classes)."""
        return layout_options(self.layout, self.path)


def build_options(cls: type[T], values: dict[str, Any] | None, path: Path | None, block: str) -> T:
    """config.build_spec for one block of a competition file (`block`: layout, source): unknown keys,
    types and the dataclass's own value checks, each error naming the file."""
    try:
        return build_spec(cls, values, f"{path}: {block}")
    except UserError as e:  # a value check in __post_init__ does not know the file: name it
        text = str(e)
        raise UserError(text if text.startswith(f"{path}:") else f"{path}: {text}") from None


def layout_options(layout: dict[str, Any], path: Path | None) -> Any:
    """layout.kind is one kagglecv has, and every key one that kind reads: a typo such as
    `holdot: 0.05` would otherwise be ignored for the default, silently."""
    kind = layout.get("kind")
    if kind not in LAYOUT_OPTIONS:
        close = difflib.get_close_matches(str(kind), list(LAYOUT_OPTIONS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"{path}: layout.kind must be one of {', '.join(LAYOUT_OPTIONS)}, got {kind!r}.{hint}"
        )
    return build_options(LAYOUT_OPTIONS[kind], layout, path, f"layout (kind {kind})")


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
    task = parse_task(data.get("task"), where)
    data = check_fields(
        Competition,
        {k: v for k, v in data.items() if k not in ("submission", "task")},
        where,
        skip=("path", "task"),
    )
    if not isinstance(data["source"], dict) or data["source"].get("kind") not in SOURCES:
        raise UserError(f"{where}: source.kind must be one of {', '.join(SOURCES)}")
    if "kind" not in data["layout"]:
        raise UserError(
            f"{where}: layout needs a 'kind' (see the README's layout kinds, or competitions/digits-demo.yaml)"
        )
    layout_options(data["layout"], path)
    submission = Submission(**check_fields(Submission, sub, f"{where}: submission"))
    if submission.kind not in SUBMISSION_KINDS:
        raise UserError(f"{where}: submission.kind must be one of {', '.join(SUBMISSION_KINDS)}")
    if submission.kind != "class_probabilities" and len(submission.label_columns) != 1:
        raise UserError(
            f"{where}: submission.label_columns needs exactly one column for kind {submission.kind}"
        )
    if submission.kind == "probability" and not submission.positive_class:
        raise UserError(f"{where}: submission.kind probability needs positive_class (the class it is P of)")
    if submission.notebook_minutes < 1:
        raise UserError(f"{where}: submission.notebook_minutes must be a positive number of minutes")
    if submission.id_is not in ("stem", "name"):
        raise UserError(f"{where}: submission.id_is must be 'stem' or 'name'")
    task.check_metric(data["metric"], where)
    if task.group_column and data["layout"].get("kind") != "csv_labels":
        raise UserError(
            f"{where}: task.group_column is a column of the labels CSV of layout kind csv_labels; "
            f"layout kind {data['layout'].get('kind')} has none"
        )
    if task.kind != "single_label":  # core/task.py reads them; the stages after prepare do not yet
        raise UserError(
            f"{where}: task.kind {task.kind} cannot be trained yet; this version trains single_label"
        )
    comp = Competition(**{**data, "submission": submission, "task": task, "path": path})
    if comp.n_folds < 2:
        raise UserError(f"{where}: n_folds must be at least 2 (k-fold needs a validation fold)")
    if comp.slug != path.stem:
        raise UserError(f"{where}: slug '{comp.slug}' differs from the file name '{path.stem}'")
    check_name(comp.slug, f"{where}: slug")
    if "competition" in comp.source:  # Kaggle's slug: a folder of the notebook's input, a URL part
        check_name(comp.source["competition"], f"{where}: source.competition")
    return comp


def similar_competition(slug: str, root: Path | None = None, cutoff: float = 0.6) -> str | None:
    """The known competition `slug` most likely means, ignoring case (Kaggle slugs are lower-case,
    so Dogs-Vs-Cats means dogs-vs-cats); None when nothing is close."""
    by_lower = {k.lower(): k for k in known_competitions(root)}
    close = difflib.get_close_matches(slug.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[close[0]] if close else None


def load_competition(slug: str, root: Path | None = None) -> Competition:
    root = root or COMPETITIONS_DIR
    check_name(slug, "COMP (a competition slug)")
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
    atomic_write(DATA_DIR / LAST_FILE, lambda p: p.write_text(slug + "\n"))


# --- names that become folders ---------------------------------------------------------------------


def check_class_name(name: Any, where: str) -> str:
    """A class label as a folder name, checked once for every source and layout: a label from a CSV
    or a YAML becomes data/<comp>/train/<name>/, so `../x`, `a/b`, `.hidden` or '' must never pass."""
    text = str(name)
    bad = (
        not text.strip()
        or text.startswith(".")
        or any(c in text for c in "/\\\0")
        or len(text.encode()) > 200
        or any(ord(c) < 32 for c in text)
    )
    if bad:
        raise UserError(
            f"{where}: class {text!r} cannot be a folder name (no '/', '\\', control characters or "
            "leading '.', not empty, at most 200 bytes); rename that class"
        )
    return text


def inside(root: Path, path: Path) -> Path:
    """`path`, once checked to lie inside `root` (no `..` or link leads out): a target built from
    names someone else chose (labels, file names) must never write elsewhere."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{path} would lie outside {root}/; refusing to write it (check the names used)")
    return path


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
