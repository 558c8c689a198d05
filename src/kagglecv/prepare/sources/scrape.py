"""Source `scrape`: your own classes from web image search (or from plain URL lists).

    make data COMP=bjj-vs-aikido

competitions/<slug>.yaml names the classes, the search queries per class and how many images to
keep per class. Search goes through a small provider interface (search.py): `ddgs` (DuckDuckGo /
Bing image search via the `ddgs` package) or `urls` (one URL per line in `urls/<slug>/<class>.txt`
next to the YAML, for reproducible datasets and for any other source). Setting KAGGLECV_SEARCH_URL
swaps the search engine for an HTTP endpoint that answers `?q=<query>&max_results=<n>` with
ddgs-shaped JSON (a self-hosted search, or the tests' loopback stand-in) -- the rest of the path is
the same.

Every found URL is downloaded (download.py: concurrently, at most `per_host` at a time from one host;
only http/https to global addresses, redirects included; a timeout per request and a deadline per
download enforced at the socket; retries with backoff on 429/5xx and network errors; a size cap;
written to a temporary name and renamed when complete) into data/<slug>/downloads/ (download_cache.py),
a cache that outlives the run: a rerun after an interruption searches nothing it already searched and downloads
nothing it already has. Then every file is decoded in full; only real RGB-convertible images above
`min_size` are kept (a body that is not one is deleted, its verdict remembered), and exact (sha256)
and near (perceptual hash) duplicates are dropped within and across classes, first one wins.

raw/ ends up as raw/<class>/<key>.<ext> (kept images, bytes as downloaded) + raw/manifest.csv
(url, file, class, sha256, phash, status, detail, query, page): one row per found URL, `status`
"kept" or why it was dropped.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import getproxies

import pandas as pd
from rich.markup import escape
from rich.table import Table

from kagglecv.core.competition import Competition
from kagglecv.core.config import build_spec
from kagglecv.core.console import console, progress
from kagglecv.core.errors import UserError
from kagglecv.core.files import link_or_copy
from kagglecv.core.images import Deduper
from kagglecv.prepare.sources.download import Clock, Downloader, short
from kagglecv.prepare.sources.download_cache import DownloadLog, Outcome, fetch_one, url_key
from kagglecv.prepare.sources.search import (
    Candidate,
    Searcher,
    SearchProvider,
    make_provider,
    url_list_candidates,
)

EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}
MANIFEST_COLUMNS = ["url", "file", "class", "sha256", "phash", "status", "detail", "query", "page"]


@dataclass
class ScrapeOptions:
    """source: keys of a scrape competition (defaults suit a laptop and polite searching)."""

    kind: str = "scrape"
    # class -> search queries (a list of class names will do for the urls provider)
    classes: dict[str, Any] | list[str] = field(default_factory=dict)
    provider: str = "ddgs"  # ddgs | urls
    count: int = 150  # images to keep per class
    oversample: float = 1.5  # search for count * oversample results: some always fail
    urls: str | None = None  # urls provider: folder of <class>.txt (default: urls/<slug>/ by the YAML)
    min_size: int = 64  # shorter side in pixels
    near_distance: int = 4  # perceptual-hash bits at or below which an image is a near duplicate (-1: off)
    workers: int = 8  # concurrent downloads
    per_host: int = 2  # concurrent downloads from one host (be polite to every site)
    timeout: float = 15.0  # seconds per request (connect, and each read); 4x that per download in all
    retries: int = 3  # extra tries on 429 / 5xx / network errors
    backoff: float = 1.0  # seconds; doubles with every retry
    max_bytes: int = 15_000_000  # size cap per image
    search_pause: float = 2.0  # seconds between search calls (search engines rate-limit)
    region: str = "us-en"  # ddgs
    safesearch: str = "moderate"  # ddgs
    backend: str = "auto"  # ddgs: auto | duckduckgo | bing | ...

    def __post_init__(self) -> None:
        raw = dict.fromkeys(self.classes) if isinstance(self.classes, list) else self.classes
        if len(raw) < 2:
            raise UserError("source.classes must name two or more classes (class: [queries])")
        classes: dict[str, list[str]] = {}
        for name, queries in raw.items():
            name = str(name)
            if not name or name.startswith(".") or "/" in name or "\\" in name:
                raise UserError(f"class name {name!r} cannot be a folder name")
            queries = [queries] if isinstance(queries, str) else list(queries or [])
            if self.provider == "ddgs" and not queries:
                raise UserError(f"class '{name}' has no search queries (class: [query, ...])")
            classes[name] = [str(q) for q in queries]
        self.classes = classes
        if self.provider not in ("ddgs", "urls"):
            raise UserError(f"source.provider must be ddgs or urls, got {self.provider!r}")
        if min(self.count, self.workers, self.per_host, self.max_bytes) < 1 or self.timeout <= 0:
            raise UserError("source.count, workers, per_host, timeout and max_bytes must be positive")
        if self.retries < 0 or self.backoff < 0 or self.search_pause < 0:
            raise UserError("source.retries, backoff and search_pause cannot be negative")


def parse_options(comp: Competition) -> ScrapeOptions:
    where = f"{comp.path or comp.slug}"
    try:
        return build_spec(ScrapeOptions, comp.source, f"{where}: source")
    except UserError as e:  # the value checks do not know the file: name it
        text = str(e)
        raise UserError(text if text.startswith(where) else f"{where}: {text}") from None


def _url_folder(comp: Competition, opts: ScrapeOptions) -> Path:
    folder = Path(opts.urls) if opts.urls else Path("urls") / comp.slug
    if not folder.is_absolute():
        folder = (comp.path.parent if comp.path else Path(".")) / folder
    return folder


def check(comp: Competition) -> None:
    """The options, and every URL list (urls provider), before anything is fetched."""
    opts = parse_options(comp)
    if opts.provider == "urls":
        for cls in opts.classes:
            url_list_candidates(_url_folder(comp, opts), cls)


# ---- the steps of a fetch -----------------------------------------------------------------------


def fetch(
    comp: Competition, raw_dir: Path, *, provider: SearchProvider | None = None, clock: Clock | None = None
) -> None:
    """Search (or read the URL lists), download and check, keep real new images in raw_dir."""
    opts = parse_options(comp)
    cache = raw_dir.parent / "downloads"  # outside raw.partial: survives an interrupted run
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.glob("*.part"):
        stale.unlink()
    candidates, unreachable = find_candidates(
        comp, opts, cache=cache / "search", provider=provider, clock=clock
    )
    outcomes = download_all(candidates, opts, files=files, log=DownloadLog(cache / "log.csv"), clock=clock)
    manifest = keep_images(candidates, outcomes, raw_dir=raw_dir, opts=opts)
    manifest.to_csv(raw_dir / "manifest.csv", index=False)
    report(manifest, outcomes, candidates)
    _fail_if_empty(comp, opts, manifest=manifest, outcomes=outcomes, unreachable=unreachable)


def _offline(comp: Competition, reasons: list[str]) -> UserError:
    return UserError(
        f"could not reach the image search (network/DNS: {reasons[0]}): check the internet connection "
        f"(and any HTTPS_PROXY), then rerun `make data COMP={comp.slug}`"
    )


def searcher_for(provider: SearchProvider, opts: ScrapeOptions, cache: Path, clock: Clock | None) -> Searcher:
    """The search step's Searcher, with the scrape options' quota, retries, backoff and pause."""
    return Searcher(
        provider,
        cache=cache,
        want=opts.count * opts.oversample,
        retries=opts.retries,
        backoff=opts.backoff,
        pause=opts.search_pause,
        clock=clock,
    )


def find_candidates(
    comp: Competition,
    opts: ScrapeOptions,
    *,
    cache: Path,
    provider: SearchProvider | None = None,
    clock: Clock | None = None,
) -> tuple[dict[str, list[Candidate]], list[str]]:
    """Step 1: candidate URLs per class, and why searches never reached the engine (if any did not).
    A machine that is offline is said once, after two searches that never got out."""
    if opts.provider == "urls":
        return {cls: url_list_candidates(_url_folder(comp, opts), cls) for cls in opts.classes}, []
    provider = provider or make_provider(
        name=opts.provider,
        region=opts.region,
        safesearch=opts.safesearch,
        backend=opts.backend,
        timeout=opts.timeout,
    )
    searcher = searcher_for(provider, opts, cache, clock)
    candidates: dict[str, list[Candidate]] = {}
    problems: list[str] = []
    asked = 0
    for cls, queries in opts.classes.items():
        console.print(
            f"searching images for [bold]{escape(cls)}[/]: {escape(', '.join(repr(q) for q in queries))}"
        )
        candidates[cls], trouble = searcher.search_class(cls, queries)
        problems += trouble
        asked += len(queries)
        if asked >= 2 and len(searcher.unreachable) == asked:  # offline: say so once, not per query
            raise _offline(comp, searcher.unreachable)
    if searcher.unreachable and len(searcher.unreachable) == asked:
        raise _offline(comp, searcher.unreachable)
    for line in problems:
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    return candidates, searcher.unreachable


def download_all(
    candidates: dict[str, list[Candidate]],
    opts: ScrapeOptions,
    *,
    files: Path,
    log: DownloadLog,
    clock: Clock | None = None,
) -> dict[str, Outcome]:
    """Step 2: download and check every URL once, concurrently; the cache makes a rerun cheap."""
    unique: dict[str, Candidate] = {}
    for cands in candidates.values():
        for c in cands:
            unique.setdefault(c.url, c)
    outcomes: dict[str, Outcome] = {}
    downloader = Downloader(
        timeout=opts.timeout,
        retries=opts.retries,
        backoff=opts.backoff,
        max_bytes=opts.max_bytes,
        per_host=opts.per_host,
        clock=clock,
    )
    with downloader:
        pool = ThreadPoolExecutor(max_workers=opts.workers)
        try:
            with progress() as bar:
                task = bar.add_task("downloading", total=len(unique), info="")
                futures = {
                    pool.submit(
                        fetch_one, c, files=files, log=log, dl=downloader, min_size=opts.min_size
                    ): url
                    for url, c in unique.items()
                }
                pending = set(futures)
                while pending:  # short waits keep Ctrl-C responsive
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for fut in done:
                        outcomes[futures[fut]] = fut.result()
                        bar.advance(task)
        finally:  # on Ctrl-C or a full disk: drop what has not started; downloads in flight finish
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _row(cls: str, c: Candidate, out: Outcome) -> dict[str, Any]:
    """A candidate's manifest row before deduplication: kept so far, or why not."""
    row = {
        "url": c.url,
        "file": "",
        "class": cls,
        "sha256": "",
        "phash": "",
        "query": c.query,
        "page": c.page,
    }
    if out.check is None:
        row.update(status=out.status, detail=out.detail)
        return row
    chk = out.check
    row.update(sha256=chk.sha256, phash=chk.phash, status=chk.status, detail=chk.detail)
    if out.fetched != c.url:
        row["detail"] = f"thumbnail ({out.fetched})" if chk.ok else chk.detail
    return row


def keep_images(
    candidates: dict[str, list[Candidate]],
    outcomes: dict[str, Outcome],
    *,
    raw_dir: Path,
    opts: ScrapeOptions,
) -> pd.DataFrame:
    """Step 3: keep real, new images in raw_dir, in search order, first one wins (deterministic
    despite threads); the manifest, one row per candidate."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    deduper = Deduper(opts.near_distance)
    rows = []
    for cls, cands in candidates.items():
        kept = 0
        for c in cands:
            out = outcomes[c.url]
            row = _row(cls, c, out)
            rows.append(row)
            if row["status"] != "kept":
                continue
            chk = out.check
            if kept >= opts.count:
                row.update(status="surplus", detail=f"{opts.count} already kept")
                continue
            status, of = deduper.check(chk.sha256, chk.phash)
            if status != "kept":
                row.update(status=status, detail=f"of {of}")
                continue
            rel = f"{cls}/{url_key(c.url)}.{EXTENSIONS.get(chk.format, chk.format.lower() or 'img')}"
            (raw_dir / cls).mkdir(exist_ok=True)
            link_or_copy(out.path, raw_dir / rel)  # the download cache is never rewritten in place
            deduper.add(chk.sha256, chk.phash, rel)
            row["file"] = rel
            kept += 1
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _fail_if_empty(
    comp: Competition,
    opts: ScrapeOptions,
    *,
    manifest: pd.DataFrame,
    outcomes: dict[str, Outcome],
    unreachable: list[str],
) -> None:
    """A class with no image kept is a UserError that says what to do: the network, or the queries."""
    kept = set(manifest.loc[manifest["status"] == "kept", "class"])
    empty = [cls for cls in opts.classes if cls not in kept]
    if not empty:
        return
    tried = [o for o in outcomes.values() if o.status != "not_tried"]
    if tried and all(o.check is None and o.status in ("network_error", "timeout") for o in tried):
        proxy = (
            " (downloads do not go through a proxy: each connects to the address it checked)"
            if getproxies()
            else ""
        )
        raise UserError(
            f"could not download a single image (network errors, e.g. {short(tried[0].detail, 80)}): "
            f"check the internet connection{proxy}, then rerun `make data COMP={comp.slug}` (searches are kept)"
        )
    offline = f"; {len(unreachable)} search(es) could not reach the engine" if unreachable else ""
    raise UserError(
        f"no images kept for class(es) {', '.join(empty)} (see the report above{offline}); fix the "
        f"queries/URL lists or wait out a rate limit, then rerun `make data COMP={comp.slug}` "
        "(downloads are kept)"
    )


def report(
    manifest: pd.DataFrame, outcomes: dict[str, Outcome], candidates: dict[str, list[Candidate]]
) -> None:
    """Classes as columns; found, downloaded (new / from the cache), kept, then one row per reason
    for dropping -- narrow enough for a terminal however many reasons turn up."""
    classes = list(candidates)
    table = Table(title="scrape: images per class (every URL in raw/manifest.csv)")
    table.add_column("")
    for cls in [*classes, "total"]:
        table.add_column(escape(cls), justify="right")

    def row(name: str, values: list[int], style: str = "") -> None:
        cells = [str(v) if v else "" for v in [*values, sum(values)]]
        table.add_row(name, *(f"[{style}]{c}[/]" if style and c else c for c in cells))

    got = {
        cls: [outcomes[c.url] for c in cands if outcomes[c.url].check is not None]
        for cls, cands in candidates.items()
    }
    counts = {cls: Counter(manifest[manifest["class"] == cls]["status"]) for cls in classes}
    row("found", [len(candidates[c]) for c in classes])
    row("downloaded", [sum(not o.cached for o in got[c]) for c in classes])
    row("from the cache", [sum(o.cached for o in got[c]) for c in classes])
    row("kept", [counts[c].get("kept", 0) for c in classes], "bold green")
    for reason in sorted(set(manifest["status"]) - {"kept"}):
        row(f"dropped: {reason}", [counts[c].get(reason, 0) for c in classes], "yellow")
    console.print(table)
