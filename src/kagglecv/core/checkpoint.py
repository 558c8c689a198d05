"""A fold checkpoint: its weights and the typed record that rebuilds the model without guessing.

    save_checkpoint(run_dir / "fold0.pt", model.state_dict(), CheckpointMeta(...))   # train, one fold
    state, meta = load_checkpoint(run_dir / "fold0.pt")                               # predict, report, export
    create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans)

The file is tensors plus one JSON string, so it loads with torch's weights_only=True (no pickled
code). CheckpointMeta.from_json reads what any earlier kagglecv wrote: the keys it does not know are
kept in `extra` and written back by to_json, so a newer file read by this build loses nothing.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path

from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write


@dataclass(frozen=True)
class CheckpointMeta:
    """What fold<k>.pt says about its model: enough to rebuild it and feed it as it was trained."""

    model: str  # the timm name
    classes: list[str]
    img_size: int  # the size its best epoch trained and validated at
    mean: list[float]
    std: list[float]
    in_chans: int = 3
    num_classes: int = 0  # len(classes) where an old file lacks it
    competition: str = ""
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

    @property
    def predict_size(self) -> int:
        """The size the fold predicts at: the recipe's test_size, else the size it was validated at."""
        return int(self.test_size or self.img_size)

    @classmethod
    def from_json(cls, d: dict) -> CheckpointMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("model", "classes", "img_size", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
        classes = [str(c) for c in d["classes"]]
        values = {k: v for k, v in d.items() if k in known}
        values.update(
            classes=classes,
            num_classes=int(d.get("num_classes") or len(classes)),
            img_size=int(d["img_size"]),
            in_chans=int(d.get("in_chans") or 3),
            mean=[float(m) for m in d["mean"]],
            std=[float(s) for s in d["std"]],
            config=d.get("config") or {},
        )
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}


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
