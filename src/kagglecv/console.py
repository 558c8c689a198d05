"""One rich console for the whole tool, and the progress bar every long loop uses."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=False, highlight=False)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160  # piped or logged: rich's 80 columns would cut table headers and split paths


def progress(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        # bars are for people at a terminal; in logs and pipes they only leave blank lines
        disable=bool(os.environ.get("KAGGLECV_NO_PROGRESS")) or not console.is_terminal,
    )


def track(items, description: str, total: int | None = None):
    """Iterate with a progress bar (a thin wrapper so every stage looks the same)."""
    with progress() as p:
        task = p.add_task(description, total=total if total is not None else len(items), info="")
        for item in items:
            yield item
            p.advance(task)
