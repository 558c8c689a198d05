"""Training recipes: typed config from YAML, overridable with strict `key=value` pairs.

    cfg = load_config("configs/demo.yaml", ["epochs=3", "lr=auto"])

An unknown key is an error that names the closest valid key, so a typo fails when the config
loads rather than silently training with a default. Each key's default and one-line meaning live in
one place, the TrainConfig field, which `kagglecv config` prints. Only yaml is imported here (no
torch), so a recipe is checked in milliseconds before any training module loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kagglecv.core.errors import UserError

T = TypeVar("T")


def key(default: Any, help: str) -> Any:
    """A recipe key: its default and its one-line meaning (`kagglecv config` prints both)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    model: str = key("resnet50", "timm model name (see timm.list_models())")
    pretrained: bool = key(True, "start from timm's pretrained weights (Hugging Face hub or its cache)")
    pretrained_file: str | None = key(None, "local weights file (.safetensors/.pth) instead of the hub")
    img_size: int | None = key(None, "training and prediction size in pixels; null: the model's own")
    # progressive resizing (fastai): the epochs of each fold spread over growing sizes
    img_sizes: list[int] | None = key(None, "growing training sizes, e.g. [128, 192, 224]: contiguous stages")
    progressive: bool = key(False, "img_sizes from the model's size: 0.5x, 0.75x, 1x (rounded to 8)")
    final_size: int | None = key(None, "after those: final_epochs more at this (larger) size, low LR")
    final_epochs: int = key(2, "epochs of the final_size stage (its own one-cycle schedule)")
    final_lr_mult: float = key(0.1, "the final_size stage's peak LR: lr x this")
    test_size: int | None = key(None, "predict the test set at this size (FixRes); null: the trained size")
    mean: list[float] | None = key(None, "per-channel normalisation mean; null: the model's pretrained one")
    std: list[float] | None = key(None, "per-channel normalisation std; null: the model's pretrained one")
    in_chans: int = key(3, "input channels")
    drop_rate: float = key(0.0, "dropout before the classifier")
    # optimisation (fastai-style fine_tune: freeze_epochs on the head, then `epochs` on everything)
    freeze_epochs: int = key(0, "epochs training only the head, body frozen, before `epochs`")
    epochs: int = key(5, "epochs training everything (one-cycle schedule)")
    batch_size: int | str = key(
        64, "images per batch, or auto: the largest that fits (GPU: probe steps, halving; CPU: estimate)"
    )
    lr: float | str = key("auto", "peak learning rate, or auto: the LR range test picks it")
    weight_decay: float = key(0.05, "AdamW weight decay")
    pct_start: float = key(0.25, "one-cycle warm-up: fraction of the steps spent raising the LR")
    layer_decay: float | None = key(None, "discriminative LRs: each earlier layer group gets lr x this")
    label_smoothing: float = key(0.1, "label smoothing of the cross-entropy loss")
    mixup: float = key(0.0, "mixup alpha (0: off)")
    cutmix: float = key(0.0, "cutmix alpha (0: off)")
    accum_steps: int = key(1, "batches whose gradients add up before each optimizer step")
    ema: bool = key(False, "validate and submit with an exponential moving average of the weights")
    ema_decay: float = key(0.998, "decay of that moving average per step")
    # LR range test
    lr_find_iters: int = key(100, "steps of the LR range test")
    lr_find_start: float = key(1e-7, "first LR the range test tries")
    lr_find_end: float = key(10.0, "last LR the range test tries")
    # cross-validation
    train_folds: int = key(
        5, "train the first N folds of folds.csv (all when N >= k); `folds` in older YAMLs"
    )
    # augmentation (flips only where the competition allows them)
    rotate: float = key(10.0, "random rotation, degrees")
    shift: float = key(0.1, "random shift, fraction of the image")
    scale: float = key(0.1, "random zoom, +- fraction")
    tta: bool = key(True, "predict also on the flips the competition allows, and average")
    # runtime
    device: str = key("auto", "auto | cpu | cuda")
    amp: bool = key(True, "mixed precision: autocast in amp_dtype (false: fp32 everywhere)")
    amp_dtype: str = key("auto", "auto (bf16 where the GPU has it, else fp16; fp32 on CPU) | bf16 | fp16")
    compile: bool = key(False, "torch.compile the model (worth it for long GPU runs)")
    cache: str = key(
        "auto", "resized images kept: auto (RAM if within cache_mb, else disk) | memory | disk | none"
    )
    workers: int | None = key(
        None, "DataLoader workers; null: min(cores, 8), 0 for in-memory data on the CPU"
    )
    cache_mb: int = key(2048, "RAM budget (MB) for decoded, resized images")
    seed: int = key(42, "random seed (folds' models, augmentation, shuffling)")
    # pseudo-labels: confident test predictions of an earlier run or blend join every training split
    pseudo: str | None = key(
        None, "run or blend whose cached test predictions give pseudo-labels (make submit it first)"
    )
    pseudo_threshold: float = key(
        0.95, "a test image is pseudo-labelled when its top probability reaches this"
    )

    def __post_init__(self) -> None:
        self._check_choices()
        if min(self.rotate, self.shift, self.scale) < 0 or self.scale >= 1:
            raise UserError(
                f"config: rotate and shift must not be negative and scale must lie in [0, 1) "
                f"(a zoom of 1 +- scale), got rotate={self.rotate}, shift={self.shift}, scale={self.scale}"
            )
        self._check_sizes()
        batch = () if self.batch_size == "auto" else ("batch_size",)
        for name in (
            "epochs",
            *batch,
            "train_folds",
            "lr_find_iters",
            "accum_steps",
            "in_chans",
            "final_epochs",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"config: {name} must be at least 1, got {getattr(self, name)}")
        if self.img_size is not None and self.img_size < 8:
            raise UserError(
                f"config: img_size must be at least 8 pixels (or null for the model's own), got {self.img_size}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_chans:
                raise UserError(f"config: {name} needs {self.in_chans} values (one per channel), got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise UserError(f"config: std values must be positive, got {self.std}")
        if isinstance(self.lr, float) and not 0 < self.lr < 10:
            raise UserError(f"config: lr must lie between 0 and 10 (or be 'auto'), got {self.lr}")
        for name in (
            "weight_decay",
            "label_smoothing",
            "mixup",
            "cutmix",
            "drop_rate",
        ):
            if getattr(self, name) < 0:
                raise UserError(f"config: {name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.pct_start < 1 or not 0 <= self.label_smoothing < 1 or not 0 < self.ema_decay < 1:
            raise UserError("config: pct_start and ema_decay must lie in (0, 1), label_smoothing in [0, 1)")
        if not 0.5 <= self.pseudo_threshold <= 1:
            raise UserError(f"config: pseudo_threshold must lie in [0.5, 1], got {self.pseudo_threshold}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"config: layer_decay must lie in (0, 1], got {self.layer_decay}")

    def _check_choices(self) -> None:
        """Keys that take one of a few words."""
        if isinstance(self.lr, str) and self.lr != "auto":
            raise UserError(f"config: lr must be a number or 'auto', got {self.lr!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"config: device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise UserError(f"config: amp_dtype must be auto, bf16 or fp16, got {self.amp_dtype!r}")
        if self.cache not in ("auto", "memory", "disk", "none"):
            raise UserError(f"config: cache must be auto, memory, disk or none, got {self.cache!r}")
        if self.freeze_epochs < 0:
            raise UserError(f"config: freeze_epochs must be 0 or more, got {self.freeze_epochs}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"config: workers must be 0 or more (or null for automatic), got {self.workers}")
        if isinstance(self.batch_size, str) and self.batch_size != "auto":
            raise UserError(f"config: batch_size must be a number or 'auto', got {self.batch_size!r}")

    def _check_sizes(self) -> None:
        if self.img_sizes is not None and self.progressive:
            raise UserError("config: give img_sizes or progressive: true, not both")
        sizes = self.img_sizes or []
        if self.img_sizes is not None and (not sizes or sorted(set(sizes)) != sizes):
            raise UserError(f"config: img_sizes must be growing sizes, e.g. [128, 192, 224], got {sizes}")
        for name, value in (("img_sizes", min(sizes, default=8)), ("final_size", self.final_size),
                            ("test_size", self.test_size)):  # fmt: skip
            if value is not None and value < 8:
                raise UserError(f"config: {name} must be at least 8 pixels, got {value}")
        if self.img_sizes and len(self.img_sizes) > self.freeze_epochs + self.epochs:
            raise UserError(
                f"config: {len(self.img_sizes)} img_sizes need at least as many epochs "
                f"(freeze_epochs + epochs = {self.freeze_epochs + self.epochs})"
            )
        if not 0 < self.final_lr_mult <= 1:
            raise UserError(f"config: final_lr_mult must lie in (0, 1], got {self.final_lr_mult}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce) a YAML value against a type hint. Returns (ok, value)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:  # a class called 3 is the class "3"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if tp is Any:
        return True, value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (item_tp,) = typing.get_args(tp)
        out = []
        for item in value:
            ok, v = _type_ok(item, item_tp)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    raise TypeError(f"unsupported config type {tp}")


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_fields(
    cls, values: dict[str, Any], where: str, what: str = "key", skip: tuple[str, ...] = ()
) -> dict:
    """Keys and types of a YAML mapping against a dataclass: an unknown key names the closest valid
    one, a wrong type names the expected one. Returns the (gently coerced) values."""
    hints = {k: v for k, v in typing.get_type_hints(cls).items() if k not in skip}
    out = {}
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), hints, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(hints)}."
            raise UserError(f"{where}: unknown {what} '{key}'.{hint}")
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise UserError(f"{where}: '{key}' must be {_type_name(hints[key])}, got {value!r}")
        out[key] = coerced
    return out


def build_spec(cls: type[T], values: dict[str, Any] | None, where: str, what: str = "key") -> T:
    """Any typed options block (a layout kind, a source kind, the recipe) from a YAML mapping: the
    same key and type checks as the recipe, defaults from the dataclass, value checks in its
    __post_init__ (which raise UserError)."""
    if values is not None and not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of key: value, got {type(values).__name__}")
    return cls(**check_fields(cls, values or {}, where, what=what))


def renamed_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Old key names still read: `folds` (older YAMLs and runs) is `train_folds`."""
    if "folds" not in values:
        return values
    if "train_folds" in values:
        raise UserError(f"{where}: 'folds' is the old name of 'train_folds'; give only train_folds")
    values = dict(values)
    values["train_folds"] = values.pop("folds")
    return values


def build_config(values: dict[str, Any], where: str) -> TrainConfig:
    """Validate keys and types of a flat dict and build the config."""
    values = renamed_keys(values, where)
    if isinstance(values.get("train_folds"), (str, list)):
        raise UserError(
            f"{where}: 'train_folds' is how many folds to train (a number); to pick fold ids use "
            "--folds 0,1 (make: FOLDS=0,1)"
        )
    fields = check_fields(TrainConfig, values, where, what="config key")
    try:
        return TrainConfig(**fields)
    except UserError as e:  # the value checks say "config: ..."; name the file or the overrides
        raise UserError(str(e).replace("config:", f"{where}:", 1)) from None


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping or fail with a message that names the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{what} {path} cannot be read as a YAML file ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value (example: epochs=3)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML recipe (optional) + `key=value` overrides -> TrainConfig. Unknown keys are errors."""
    values: dict[str, Any] = {}
    where = "config"
    if path:
        file_values = read_yaml(Path(path), "config file")
        file_values.pop("tune", None)  # make tune's search space (tune/study.py checks it), not a recipe key
        values.update(renamed_keys(file_values, str(path)))
        where = str(path)
        build_config(values, where)  # report file errors against the file
    if overrides:
        values.update(renamed_keys(parse_overrides(overrides), "override"))
        where = "override"
    cfg = build_config(values, where)
    check_final_size(cfg, cfg.img_size, where)
    return cfg


def check_final_size(cfg: TrainConfig, base: int | None, where: str) -> None:
    """final_size is the last, larger stage: not below the size the epochs before it train at (the
    last of img_sizes, else img_size; `base` is the model's own size where img_size is null). Checked
    for recipes, not for the saved config of a run that trained already."""
    last = cfg.img_sizes[-1] if cfg.img_sizes else base
    if cfg.final_size is not None and last is not None and cfg.final_size < last:
        raise UserError(
            f"{where}: final_size {cfg.final_size} is smaller than the training size {last} before it; "
            "final_size is a last stage at a larger size: raise it, or leave it out"
        )


def stage_sizes(cfg: TrainConfig, base: int) -> list[int]:
    """The training size of every epoch of a fold (head, all, then final_size epochs): contiguous
    stages of growing size, the later (larger) stages taking the epochs that do not divide evenly."""
    n = cfg.freeze_epochs + cfg.epochs
    sizes = cfg.img_sizes or [base]
    if cfg.progressive:
        sizes = sorted({max(8, round(base * f / 8) * 8) for f in (0.5, 0.75)} | {base})
    sizes = sizes[:n]
    per, extra = divmod(n, len(sizes))
    out = [s for i, s in enumerate(sizes) for _ in range(per + (i >= len(sizes) - extra))]
    return out + [cfg.final_size] * (cfg.final_epochs if cfg.final_size else 0)


def describe_config() -> list[tuple[str, Any, str, str]]:
    """(key, default, type, meaning) of every recipe key, in the dataclass's order."""
    hints = typing.get_type_hints(TrainConfig)
    return [
        (f.name, f.default, _type_name(hints[f.name]), f.metadata.get("help", ""))
        for f in dataclasses.fields(TrainConfig)
    ]


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with a run (checkpoints carry their config)."""
    return build_config(values, "saved config")


__all__ = [
    "TrainConfig",
    "build_spec",
    "check_fields",
    "check_final_size",
    "config_from_dict",
    "describe_config",
    "load_config",
    "read_yaml",
    "stage_sizes",
]
