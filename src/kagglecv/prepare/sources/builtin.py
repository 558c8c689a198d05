"""Built-in competitions that need no account or network.

`sklearn-digits`: scikit-learn's bundled 1,797 handwritten 8x8 digits, upscaled to 28x28 and written
exactly as Kaggle's digit-recognizer ships its files (train.csv: label,pixel0..pixel783; test.csv;
sample_submission.csv: ImageId,Label), with a stratified share held out as the test set and its
labels kept in solution.csv so the submission can be scored locally. With `train_per_class: 20`
only 20 images per class are for training and every other digit is the labelled test set (the
`digits-small` competition: the low-data regime of a scraped set of your own classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from kagglecv.core.competition import Competition, build_options
from kagglecv.core.errors import UserError


def _digits_frames(test_fraction: float, seed: int, side: int, train_per_class: int | None = None):
    digits = load_digits()
    images = np.stack(
        [
            cv2.resize((img * 255.0 / 16.0).astype(np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
            for img in digits.images
        ]
    )
    labels = digits.target
    if train_per_class:  # the low-data regime: a few images per class, the rest a labelled holdout
        rng = np.random.default_rng(seed)
        tr = np.sort(
            np.concatenate(
                [rng.permutation(np.flatnonzero(labels == c))[:train_per_class] for c in np.unique(labels)]
            )
        )
        te = np.setdiff1d(np.arange(len(labels)), tr)
    else:
        tr, te = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
        )
    pixel_cols = [f"pixel{i}" for i in range(side * side)]
    train = pd.DataFrame(images[tr].reshape(len(tr), -1), columns=pixel_cols)
    train.insert(0, "label", labels[tr])
    test = pd.DataFrame(images[te].reshape(len(te), -1), columns=pixel_cols)
    ids = np.arange(1, len(te) + 1)
    sample = pd.DataFrame({"ImageId": ids, "Label": 0})
    solution = pd.DataFrame({"ImageId": ids, "label": labels[te].astype(str)})
    return train, test, sample, solution


DATASETS = {"sklearn-digits": _digits_frames}


@dataclass
class BuiltinSource:
    """source: keys of a built-in competition."""

    kind: str = "builtin"
    dataset: str = ""  # one of DATASETS
    test_fraction: float = 0.2  # stratified share held out as the test set
    seed: int = 0
    side: int = 28  # images are side x side pixels
    train_per_class: int | None = None  # instead of test_fraction: this many training images per class

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"source.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if not 0.05 <= self.test_fraction <= 0.5 or not 8 <= self.side <= 512:
            raise UserError("source.test_fraction must lie in [0.05, 0.5] and side in [8, 512]")
        if self.train_per_class is not None and self.train_per_class < 2:
            raise UserError(f"source.train_per_class must be 2 or more, got {self.train_per_class}")


def check(comp: Competition) -> None:
    build_options(BuiltinSource, comp.source, comp.path, "source")


def fetch(comp: Competition, raw_dir: Path) -> None:
    opts = build_options(BuiltinSource, comp.source, comp.path, "source")
    train, test, sample, solution = DATASETS[opts.dataset](
        opts.test_fraction, opts.seed, opts.side, opts.train_per_class
    )
    raw_dir.mkdir(parents=True, exist_ok=True)
    train.to_csv(raw_dir / "train.csv", index=False)
    test.to_csv(raw_dir / "test.csv", index=False)
    sample.to_csv(raw_dir / "sample_submission.csv", index=False)
    solution.to_csv(raw_dir / "solution.csv", index=False)
