"""data/<comp>/prepared.json as a typed record: what `make data` laid out, read by every later stage.

    info = read_prepared(comp)          # layout.py: a PreparedInfo, or a UserError when not prepared
    info.classes, info.train_counts, info.n_test, info.unreadable_test

layout.py writes it last, atomically (its presence means the prepared shape is complete), with the
keys every release has written, so older readers and the user's own tools still read it. Reading
follows core/json_record.py: a key the file lacks gets its default, a key this release does not know
is kept in `extra` and written back; a file without `classes`, or with a known key of the wrong
kind, is damaged (read_prepared: not prepared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from kagglecv.core import json_record as jr

PREPARED = "prepared.json"


@dataclass(kw_only=True)
class PreparedInfo(jr.JsonRecord):
    """prepared.json; the fields in the order the file has always listed them."""

    WHAT: ClassVar[str] = PREPARED
    READERS: ClassVar[dict[str, jr.Reader]] = {
        "competition": jr.text,
        "classes": jr.str_list,
        "train_counts": jr.counts,
        "n_train": jr.whole,
        "n_test": jr.whole,
        "n_folds": jr.whole,
        "fold_seed": jr.whole,
        "has_solution": jr.flag,
        "prepared_at": jr.text,
        "unreadable_train": jr.str_list,
        "unreadable_test": jr.str_list,
    }

    competition: str = ""
    classes: list[str]  # sorted; every later stage's class order (the one key a file must have)
    train_counts: dict[str, int] = field(default_factory=dict)  # images per class in folds.csv
    n_train: int = 0
    n_test: int = 0  # test images, unreadable ones included (Kaggle scores every id)
    n_folds: int | None = None  # None: the file did not say, so `make data` splits again
    fold_seed: int | None = None
    has_solution: bool = False  # data/<comp>/solution.csv holds the test labels
    prepared_at: str | None = None  # local time, 2026-12-07T22:28:01
    unreadable_train: list[str] = field(default_factory=list)  # train/<class>/<img>, left out of every fold
    unreadable_test: list[str] = field(default_factory=list)  # <img> relative to test/: rows get the prior
    extra: dict[str, Any] = field(default_factory=dict)  # keys this release does not know, kept as read
