"""How raw files arrive in `data/<comp>/raw/`. One module per source kind (`builtin.py`, ...); each
exposes `fetch(comp, raw_dir)`, which writes the files as obtained into `raw_dir` (a fresh folder
that `prepare` renames to `raw/` only once the fetch has finished)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..competition import Competition
from ..errors import UserError


def fetch(comp: Competition, raw_dir: Path) -> None:
    try:
        module = importlib.import_module(f".{comp.source_kind}", __package__)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.{comp.source_kind}":
            raise
        raise UserError(
            f"{comp.path}: source '{comp.source_kind}' is not available in this version of kagglecv"
        ) from None
    module.fetch(comp, raw_dir)
