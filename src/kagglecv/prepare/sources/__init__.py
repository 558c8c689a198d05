"""How raw files arrive in `data/<comp>/raw/`. One module per source kind (`builtin.py`, ...); each
exposes `fetch(comp, raw_dir)`, which writes the files as obtained into `raw_dir` (a fresh folder
that `prepare` renames to `raw/` only once the fetch has finished), and may expose `check(comp)`,
which finds what it can without fetching (bad keys, a folder that is gone) before anything is
touched. A source's keys are a typed dataclass in its module (FolderSource, BuiltinSource, ...),
built from the YAML's `source:` block with competition.build_options."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from kagglecv.core.competition import Competition
from kagglecv.core.errors import UserError


def _module(comp: Competition) -> ModuleType:
    try:
        return importlib.import_module(f".{comp.source_kind}", __package__)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.{comp.source_kind}":
            raise
        raise UserError(
            f"{comp.path}: source '{comp.source_kind}' is not available in this version of kagglecv"
        ) from None


def check(comp: Competition) -> None:
    """The source's own checks that need no download: a UserError now rather than after FORCE has
    started replacing things."""
    module = _module(comp)
    if hasattr(module, "check"):
        module.check(comp)


def fetch(comp: Competition, raw_dir: Path) -> None:
    _module(comp).fetch(comp, raw_dir)
