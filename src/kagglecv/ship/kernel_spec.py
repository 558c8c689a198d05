"""kernel.json as a typed record: what a Kaggle notebook needs beyond the export to write `make
submit`'s file. kernel.py writes it into the run's Kaggle dataset; notebook.py (on Kaggle, from the
wheel the dataset carries) reads it.

    spec = KernelSpec.from_json(json.loads(text))    # spec.competition, spec.train_counts, spec.predict.amp
    json.dumps(spec.to_json())                        # the keys kernel.json has always had

Reading follows core/json_record.py: a key the file lacks gets its default, a key this release does
not know is kept in `extra` and written back, a file without `run` or `competition` (or with a known
key of the wrong kind) is a ValueError. Only the standard library and core: the notebook imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from kagglecv.core import json_record as jr

KERNEL_JSON = "kernel.json"


@dataclass(kw_only=True)
class KernelPredict(jr.JsonRecord):
    """How the notebook predicts: the run recipe's device and mixed precision."""

    WHAT: ClassVar[str] = f"{KERNEL_JSON} predict"
    READERS: ClassVar[dict[str, jr.Reader]] = {"device": jr.text, "amp": jr.flag, "amp_dtype": jr.text}

    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # keys this release does not know, kept as read


@dataclass(kw_only=True)
class KernelSpec(jr.JsonRecord):
    """kernel.json; the fields in the order the file has always listed them."""

    WHAT: ClassVar[str] = KERNEL_JSON
    READERS: ClassVar[dict[str, jr.Reader]] = {
        "format": jr.whole,
        "run": jr.text,
        "cv_mean": jr.number,
        "competition": jr.json_object,
        "train_counts": jr.counts,
        "postprocess": jr.json_object,
        "predict": KernelPredict.from_json,
        "wheels": jr.str_list,
    }

    format: int = 1
    run: str  # the run the dataset's export came from (the notebook finds its dataset by it)
    cv_mean: float | None = None
    competition: dict[str, Any]  # the competition's YAML as read: notebook.py parses it (parse_competition)
    train_counts: dict[str, int] = field(default_factory=dict)  # prepared.json's: unreadable rows' prior
    postprocess: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # postprocess.py's plan
    predict: KernelPredict = field(default_factory=KernelPredict)
    wheels: list[str] = field(default_factory=list)  # the wheel files in the dataset the notebook installs
    extra: dict[str, Any] = field(default_factory=dict)  # keys this release does not know, kept as read
