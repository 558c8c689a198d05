"""The download cache, data/<comp>/downloads/: the bytes of every URL fetched (files/<key>) and the
verdict on every URL tried (log.csv), so a rerun downloads nothing it has and retries only what might
work now. A body that is no usable image is deleted as soon as it is checked (its verdict stays in
the log); one worker at a time works on a URL's entry (a thumbnail can be another result's image).

    outcome = fetch_one(candidate, files=cache / "files", log=DownloadLog(cache / "log.csv"), dl=..., min_size=64)
"""

from __future__ import annotations

import csv
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from kagglecv.core.images import ImageCheck, check_image
from kagglecv.prepare.sources.download import Downloader, Slots
from kagglecv.prepare.sources.search import Candidate

# Failures worth trying again on a rerun; every other outcome is remembered and not retried.
TRANSIENT = ("timeout", "network_error", "http_429", "http_5")


class DownloadLog:
    """downloads/log.csv: the outcome of every URL tried, appended as it happens (thread-safe), so a
    rerun skips what failed for good and retries only what might work now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        # one worker at a time on a URL's cache entry (a thumbnail can be another result's image)
        self.urls = Slots(1)
        self.known: dict[str, tuple[str, str]] = {}
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.reader(f):
                    if len(row) == 3 and row != ["url", "status", "detail"]:
                        self.known[row[0]] = (row[1], row[2])

    def add(self, url: str, status: str, detail: str) -> None:
        with self.lock:
            self.known[url] = (status, detail)
            new = not self.path.exists()
            with open(self.path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["url", "status", "detail"])
                writer.writerow([url, status, detail])

    def permanent_failure(self, url: str) -> tuple[str, str] | None:
        got = self.known.get(url)
        if got and got[0] != "downloaded" and not got[0].startswith(TRANSIENT):
            return got
        return None


@dataclass
class Outcome:
    status: str  # "downloaded" (from the net or the cache) or why not
    detail: str = ""
    path: Path | None = None
    check: ImageCheck | None = None
    cached: bool = False
    fetched: str = ""  # the URL whose bytes these are (the thumbnail when the full image failed)


def url_key(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:20]


def fetch_one(cand: Candidate, *, files: Path, log: DownloadLog, dl: Downloader, min_size: int) -> Outcome:
    """Download (or find in the cache) and fully check one candidate; fall back to its thumbnail.
    A body that is no usable image is deleted at once; the log remembers why, so a rerun neither
    downloads it again nor keeps junk (HTML pages, broken files) in the cache."""
    outcome = Outcome("not_tried")
    for url in [cand.url] + ([cand.thumbnail] if cand.thumbnail else []):
        with log.urls.hold(url):
            got = _fetch_checked(url, files / url_key(url), log, dl, min_size)
        if got.check is not None and got.check.ok:
            return got
        if outcome.status == "not_tried" or (outcome.check is None and got.check is not None):
            outcome = got
    return outcome


def _fetch_checked(url: str, path: Path, log: DownloadLog, dl: Downloader, min_size: int) -> Outcome:
    """One URL from the cache or the net, checked; a body that fails the check is deleted."""
    cached = path.exists()
    if not cached:
        failed = log.permanent_failure(url)
        if failed:
            status, detail = failed
        else:
            status, detail = dl.download(url, path)
            log.add(url, status, detail)
        if status != "downloaded":
            return Outcome(status, detail, fetched=url)
    check = check_image(path.read_bytes(), min_size)
    if not check.ok:
        path.unlink(missing_ok=True)
        log.add(url, check.status, check.detail)
    return Outcome("downloaded", path=path, check=check, cached=cached, fetched=url)
