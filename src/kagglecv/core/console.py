"""One rich console for the whole tool, the progress bar every long loop uses, and the size bar downloads show."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
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


def _download_progress() -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=bool(os.environ.get("KAGGLECV_NO_PROGRESS")),
    )


def with_size_bar(call: Callable[[], Any], watch: Path, description: str) -> Any:
    """Run `call` in a thread and show how big `watch` has grown (the client's own bar is off)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    with _download_progress() as p:
        task = p.add_task(description, total=None)
        thread.start()
        while thread.is_alive():
            thread.join(0.25)
            with contextlib.suppress(OSError):
                p.update(task, completed=watch.stat().st_size)
    if "error" in box:
        raise box["error"]
    return box.get("result")
