"""Reading the CSVs a competition hands us (labels, sample submissions, folds): a missing or
unreadable file is one clear line naming it, never a pandas traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kagglecv.core.errors import UserError


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """`path` as a DataFrame; `what` names the file's role in the error ("labels CSV")."""
    if not path.exists():
        raise UserError(f"{what}: expected {path}, which is missing (check the competition's layout)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
