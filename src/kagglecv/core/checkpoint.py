"""A fold checkpoint: its weights and the typed record that rebuilds the model without guessing.

    save_checkpoint(run_dir / "fold0.pt", model.state_dict(), CheckpointMeta(...))   # train, one fold
    state, meta = load_checkpoint(run_dir / "fold0.pt")                               # predict, report, export
    create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans)

The file is tensors plus one JSON string, so it loads with torch's weights_only=True (no pickled
code). CheckpointMeta follows core/json_record.py as the other records do: what any earlier
kagglecv wrote loads (a missing key gets its default), and keys it does not know are kept in
`extra` and written back, so a newer file read by this build loses nothing.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from kagglecv.core import json_record as jr
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta(jr.JsonRecord):
    """What fold<k>.pt says about its model: enough to rebuild it and feed it as it was trained.
    The fields in the order train has always written them."""

    WHAT: ClassVar[str] = "checkpoint meta"
    READERS: ClassVar[dict[str, jr.Reader]] = {
        "competition": jr.text,
        "model": jr.text,
        "num_classes": jr.whole,
        "classes": jr.str_list,
        "in_chans": jr.whole,
        "img_size": jr.whole,
        "mean": jr.floats,
        "std": jr.floats,
        "train_sizes": jr.wholes,
        "test_size": jr.whole,
        "fold": jr.whole,
        "best_epoch": jr.whole,
        "metric": jr.text,
        "score": jr.number,
        "lr": jr.number,
        "ema": jr.flag,
        "config": jr.json_object,
    }

    competition: str = ""
    model: str  # the timm name
    num_classes: int = 0  # len(classes) where a file lacks it
    classes: list[str]
    in_chans: int = 3
    img_size: int  # the size its best epoch trained and validated at
    mean: list[float]
    std: list[float]
    train_sizes: list[int] = field(default_factory=list)  # progressive resizing: every stage's size
    test_size: int | None = None  # the recipe's test_size (FixRes): predicted at this size when set
    fold: int = 0
    best_epoch: int = 0
    metric: str = ""
    score: float | None = None  # the fold's validation score at its best epoch
    lr: float = 0.0
    ema: bool = False
    config: dict = field(default_factory=dict)  # the run's resolved recipe (TrainConfig.to_dict())
    extra: dict = field(default_factory=dict)  # keys this build does not know, kept as they were

    def __post_init__(self) -> None:
        if not self.num_classes:
            object.__setattr__(self, "num_classes", len(self.classes))

    @property
    def predict_size(self) -> int:
        """The size the fold predicts at: the recipe's test_size, else the size it was validated at."""
        return int(self.test_size or self.img_size)


def save_checkpoint(path: Path, state_dict: dict, meta: CheckpointMeta) -> None:
    # tensors + a JSON string: loads with weights_only=True, no pickled code
    import torch

    text = json.dumps(meta.to_json())
    atomic_write(path, lambda p: torch.save({"state_dict": state_dict, "meta": text}, p))


def load_checkpoint(path: Path) -> tuple[dict, CheckpointMeta]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["state_dict"], CheckpointMeta.from_json(json.loads(ckpt["meta"]))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); retrain this run") from None
