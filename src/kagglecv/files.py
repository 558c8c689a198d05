"""Writing files so that a file that exists is complete."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then rename tmp to `path`: a killed process never leaves a half file under the
    real name. The temporary name is per process (torchrun ranks may write the same file at once)
    and keeps the suffix, so writers that pick a format by it still do."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
