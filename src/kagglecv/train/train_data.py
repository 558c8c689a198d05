"""The training images of a run, as every fold shares them: folds.csv checked once, pseudo-labels
joined, labels as indices, and the dataset at each image size built on first use.

    data = TrainData(comp, cfg, size=32)     # run.py builds it once per run
    ds, workers = data.at(48)                 # progressive resizing: another stage's size

Its own module because both the run (run.py) and one fold (one_fold.py's RunContext) name it.
"""

from __future__ import annotations

import pandas as pd

from kagglecv.core.competition import Competition
from kagglecv.core.config import TrainConfig
from kagglecv.core.errors import UserError
from kagglecv.ml.data import ImageDataset, training_set
from kagglecv.prepare.layout import FOLDS, read_folds, read_prepared
from kagglecv.prepare.prepared import PreparedInfo


def read_data(comp: Competition) -> tuple[PreparedInfo, pd.DataFrame]:
    """prepared.json and the checked folds.csv."""
    info = read_prepared(comp)
    return info, read_folds(comp, info)


class TrainData:
    """Everything about the training images that does not change between folds."""

    def __init__(
        self,
        comp: Competition,
        cfg: TrainConfig,
        size: int,
        cuda: bool = False,
        prepared: tuple[PreparedInfo, pd.DataFrame] | None = None,
    ):
        """`prepared`: (prepared.json, folds.csv) where the caller has read them already."""
        root = comp.data_dir
        info, self.folds = prepared or read_data(comp)
        self.classes: list[str] = list(info.classes)
        self.pseudo = None
        if cfg.pseudo:  # confident test predictions join every training split, never a validation one
            from kagglecv.train.pseudo import pseudo_rows, report_pseudo

            rows = pseudo_rows(comp, cfg.pseudo, cfg.pseudo_threshold, self.classes)
            self.pseudo = report_pseudo(rows, cfg.pseudo, cfg.pseudo_threshold, info.n_test, self.classes)
            self.folds = pd.concat([self.folds, rows], ignore_index=True)
        self.labels = (
            self.folds["label"].astype(str).map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        )
        paths = [root / p for p in self.folds["image"]]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise UserError(
                f"{len(missing)} images in {root / FOLDS} are missing (e.g. {missing[0]}); rerun `make data COMP={comp.slug} FORCE=1`"
            )
        self.paths, self.size = paths, size  # size: the first stage's (progressive resizing)
        self._build = (root, cfg, cuda)
        self._sets: dict[int, tuple] = {}
        self.at(size)
        self.n_folds = int(self.folds.loc[self.folds["fold"] >= 0, "fold"].nunique())

    def at(self, size: int) -> tuple[ImageDataset, int]:
        """(dataset, loader workers) at `size`, built on first use; in-RAM sets beyond cache_mb
        together are let go first, so progressive resizing holds one size at a time when it must."""
        if size not in self._sets:
            root, cfg, cuda = self._build
            held = [k for k, (ds, _) in self._sets.items() if ds.images is not None]
            if sum(k * k for k in [*held, size]) * 3 * len(self.paths) > cfg.cache_mb * 2**20:
                for k in held:
                    del self._sets[k]
            self._sets[size] = training_set(self.paths, self.labels, root, size, cfg, cuda)
        return self._sets[size]

    @property
    def dataset(self) -> ImageDataset:
        return self.at(self.size)[0]

    @property
    def workers(self) -> int:
        return self.at(self.size)[1]
