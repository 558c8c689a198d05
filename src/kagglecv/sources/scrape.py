"""Source `scrape`: your own classes from web image search (or from plain URL lists).

    make data COMP=bjj-vs-aikido

competitions/<slug>.yaml names the classes, the search queries per class and how many images to
keep per class. Search goes through a small provider interface: `ddgs` (DuckDuckGo / Bing image
search via the `ddgs` package) or `urls` (one URL per line in `urls/<slug>/<class>.txt` next to the
YAML, for reproducible datasets and for any other source). Setting KAGGLECV_SEARCH_URL swaps the
search engine for an HTTP endpoint that answers `?q=<query>&max_results=<n>` with ddgs-shaped JSON
(a self-hosted search, or the tests' loopback stand-in) -- the rest of the path is the same.

Every found URL is downloaded (concurrently; per-request timeout; retries with backoff on 429/5xx
and network errors; a size cap; http/https only; written to a temporary name and renamed when
complete) into data/<slug>/downloads/, a cache that outlives the run: a rerun after an interruption
searches nothing it already searched and downloads nothing it already has. Then every file is
decoded in full; only real RGB-convertible images above `min_size` are kept, and exact (sha256) and
near (perceptual hash) duplicates are dropped within and across classes, first one wins.

raw/ ends up as raw/<class>/<key>.<ext> (kept images, bytes as downloaded) + raw/manifest.csv
(url, file, class, sha256, phash, status, detail, query, page): one row per found URL, `status`
"kept" or why it was dropped.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from rich.markup import escape
from rich.table import Table

from ..competition import Competition
from ..console import console, progress
from ..errors import UserError
from ..images import Deduper, ImageCheck, check_image

SEARCH_URL_ENV = "KAGGLECV_SEARCH_URL"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124 Safari/537.36"
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
# Failures worth trying again on a rerun; every other outcome is remembered and not retried.
TRANSIENT = ("timeout", "network_error", "http_429", "http_5")


@dataclass
class ScrapeOptions:
    """source: keys of a scrape competition (defaults suit a laptop and polite searching)."""

    kind: str = "scrape"
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> search queries
    provider: str = "ddgs"  # ddgs | urls
    count: int = 150  # images to keep per class
    oversample: float = 1.5  # search for count * oversample results: some always fail
    urls: str | None = None  # urls provider: folder of <class>.txt (default: urls/<slug>/ by the YAML)
    min_size: int = 64  # shorter side in pixels
    near_distance: int = 4  # perceptual-hash bits at or below which an image is a near duplicate (-1: off)
    workers: int = 8  # concurrent downloads
    timeout: float = 15.0  # seconds per request (connect, and each read)
    retries: int = 3  # extra tries on 429 / 5xx / network errors
    backoff: float = 1.0  # seconds; doubles with every retry
    max_bytes: int = 15_000_000  # size cap per image
    search_pause: float = 2.0  # seconds between search calls (search engines rate-limit)
    region: str = "us-en"  # ddgs
    safesearch: str = "moderate"  # ddgs
    backend: str = "auto"  # ddgs: auto | duckduckgo | bing | ...


def parse_options(comp: Competition) -> ScrapeOptions:
    names = list(ScrapeOptions.__dataclass_fields__)
    for key in comp.source:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise UserError(f"{comp.path}: source: unknown key '{key}'.{hint}")
    opts = ScrapeOptions(**comp.source)
    raw = opts.classes
    if isinstance(raw, list):
        raw = dict.fromkeys(raw)
    if not isinstance(raw, dict) or len(raw) < 2:
        raise UserError(f"{comp.path}: source.classes must name two or more classes (class: [queries])")
    classes: dict[str, list[str]] = {}
    for name, queries in raw.items():
        name = str(name)
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise UserError(f"{comp.path}: class name {name!r} cannot be a folder name")
        queries = [queries] if isinstance(queries, str) else list(queries or [])
        if opts.provider == "ddgs" and not queries:
            raise UserError(f"{comp.path}: class '{name}' has no search queries (class: [query, ...])")
        classes[name] = [str(q) for q in queries]
    opts.classes = classes
    if opts.provider not in ("ddgs", "urls"):
        raise UserError(f"{comp.path}: source.provider must be ddgs or urls, got {opts.provider!r}")
    if opts.count < 1 or opts.workers < 1 or opts.timeout <= 0 or opts.max_bytes < 1:
        raise UserError(f"{comp.path}: source.count, workers, timeout and max_bytes must be positive")
    return opts


# ---- search providers ---------------------------------------------------------------------------


class SearchError(Exception):
    """The search failed for a reason retrying will not fix (reported, then the next query runs)."""


class SearchRateLimited(SearchError):
    """The engine said slow down: back off and try again."""


class SearchTimeout(SearchError):
    """The engine did not answer in time: try again."""


class SearchUnreachable(SearchError):
    """The engine could not be reached at all (no network, DNS, a refused connection)."""


# How the ddgs package's HTTP client words "never got to the server" (its errors are plain text).
_DNS_WORDS = (
    "dnserror",
    "dns error",
    "error resolving dns",
    "failed to lookup address",
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
)
_CONNECT_WORDS = (
    "connecterror",
    "connection refused",
    "network is unreachable",
    "no route to host",
    "tcp connect error",
    "(connect)",
)


def _unreachable(text: str) -> str | None:
    """Why the engine was never reached ("DNS lookup failed", "could not connect"), going by an
    error's text; None for any other failure."""
    low = text.lower()
    if any(w in low for w in _DNS_WORDS):
        return "DNS lookup failed"
    if any(w in low for w in _CONNECT_WORDS):
        return "could not connect"
    return None


def _short(text: str, limit: int = 120) -> str:
    """One line of an error's text: exceptions from HTTP clients run to hundreds of characters."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 2] + " …"


def _os_reason(err: OSError, host: str) -> str:
    if isinstance(err, socket.gaierror):
        return f"DNS lookup of {host} failed"
    if isinstance(err, ConnectionRefusedError):
        return f"{host} refused the connection"
    return f"{host}: {_short(err.strerror or str(err) or type(err).__name__, 80)}"


class SearchProvider(Protocol):
    name: str

    def images(self, query: str, max_results: int) -> list[dict[str, Any]]:
        """ddgs-shaped results: dicts with image, thumbnail, url (the page), title, width, height, source.
        No results is an empty list; rate limits and timeouts raise SearchRateLimited / SearchTimeout."""
        ...


class DdgsProvider:
    """Image search through the `ddgs` package (DuckDuckGo, Bing, ...), errors mapped to ours."""

    name = "ddgs"

    def __init__(
        self, region: str = "us-en", safesearch: str = "moderate", backend: str = "auto", timeout: float = 10
    ):
        self.region, self.safesearch, self.backend, self.timeout = region, safesearch, backend, timeout

    def images(self, query: str, max_results: int) -> list[dict[str, Any]]:
        import ddgs
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        try:
            client = ddgs.DDGS(timeout=int(math.ceil(self.timeout)))
            results = client.images(
                query,
                region=self.region,
                safesearch=self.safesearch,
                backend=self.backend,
                max_results=max_results,
            )
        except RatelimitException as e:
            raise SearchRateLimited(str(e) or "rate limited") from None
        except TimeoutException as e:
            raise SearchTimeout(str(e) or "timed out") from None
        except DDGSException as e:
            if "no results" in str(e).lower():
                return []
            text = str(e) or type(e).__name__
            why = _unreachable(text)
            if why:
                raise SearchUnreachable(f"could not reach the search engine ({why})") from None
            raise SearchError(_short(text)) from None
        return list(results or [])


class JsonEndpointProvider:
    """A search endpoint answering `GET <url>?q=..&max_results=..` with a JSON list of ddgs-shaped
    results (KAGGLECV_SEARCH_URL): a self-hosted search, or the tests' loopback stand-in."""

    name = "json-endpoint"

    def __init__(self, url: str, timeout: float = 10):
        self.url, self.timeout = url, timeout

    def images(self, query: str, max_results: int) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"q": query, "max_results": max_results})
        sep = "&" if "?" in self.url else "?"
        try:
            with _opener().open(_request(f"{self.url}{sep}{q}"), timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 429:
                raise SearchRateLimited(f"HTTP 429 from {self.url}") from None
            raise SearchError(f"HTTP {e.code} from {self.url}") from None
        except TimeoutError:
            raise SearchTimeout(f"no answer from {self.url} in {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise SearchTimeout(f"no answer from {self.url} in {self.timeout:g} s") from None
            if isinstance(e.reason, OSError):
                host = urllib.parse.urlparse(self.url).netloc or self.url
                raise SearchUnreachable(_os_reason(e.reason, host)) from None
            raise SearchError(f"{self.url}: {_short(str(e.reason))}") from None
        except (OSError, http.client.HTTPException) as e:  # e.g. the connection dropped mid-answer
            raise SearchError(f"{self.url}: {_short(str(e) or type(e).__name__)}") from None
        try:
            results = json.loads(body)
        except ValueError:
            raise SearchError(f"{self.url} did not answer with JSON") from None
        if isinstance(results, dict):
            results = results.get("results", [])
        return list(results)


def make_provider(opts: ScrapeOptions) -> SearchProvider:
    endpoint = os.environ.get(SEARCH_URL_ENV)
    if endpoint:
        console.print(
            f"[yellow]search:[/] {SEARCH_URL_ENV} is set, searching {escape(endpoint)} instead of {opts.provider}"
        )
        return JsonEndpointProvider(endpoint, timeout=opts.timeout)
    return DdgsProvider(opts.region, opts.safesearch, opts.backend, timeout=opts.timeout)


@dataclass
class Candidate:
    """One image URL found for a class (the row it becomes in manifest.csv)."""

    url: str
    cls: str
    query: str = ""
    page: str = ""
    title: str = ""
    thumbnail: str = ""
    width: int | None = None
    height: int | None = None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def to_candidate(result: dict[str, Any], cls: str, query: str) -> Candidate | None:
    """A ddgs image result -> Candidate: `image` is the full picture, `thumbnail` the engine's small
    copy (used when the full one fails), `url` the page it sits on; width/height may be blank."""
    url = str(result.get("image") or result.get("thumbnail") or "").strip()
    if not url:
        return None
    thumb = str(result.get("thumbnail") or "").strip()
    return Candidate(
        url=url,
        cls=cls,
        query=query,
        page=str(result.get("url") or ""),
        title=str(result.get("title") or ""),
        thumbnail=thumb if thumb != url else "",
        width=_int_or_none(result.get("width")),
        height=_int_or_none(result.get("height")),
    )


def search_class(
    provider: SearchProvider,
    cls: str,
    queries: list[str],
    opts: ScrapeOptions,
    cache: Path,
    state: dict[str, float],
    unreachable: list[str] | None = None,
) -> tuple[list[Candidate], list[str]]:
    """Candidates for one class from all its queries, in order, each URL once. Finished searches are
    cached in `cache`, so a rerun asks the engine nothing twice. Returns (candidates, problems);
    `unreachable` gets why, for every query whose search never reached the engine."""
    per_query = max(1, math.ceil(opts.count * opts.oversample / max(1, len(queries))))
    found: dict[str, Candidate] = {}
    problems: list[str] = []
    for query in queries:
        key = hashlib.sha1(f"{provider.name}|{query}|{per_query}".encode()).hexdigest()[:16]
        path = cache / f"{key}.json"
        if path.exists():
            results = json.loads(path.read_text())
        else:
            results = None
            for attempt in range(opts.retries + 1):
                wait = opts.search_pause - (time.monotonic() - state.get("last", -1e9))
                if wait > 0:
                    time.sleep(wait)
                last, state["last"] = state.get("last", -1e9), time.monotonic()
                try:
                    results = provider.images(query, per_query)
                    break
                except SearchUnreachable as e:
                    state["last"] = last  # it never got there: no need to pause before the next one
                    problems.append(f"search '{query}' ({cls}): {e}")
                    if unreachable is not None:
                        unreachable.append(str(e))
                    break
                except (SearchRateLimited, SearchTimeout) as e:
                    if attempt == opts.retries:
                        problems.append(f"search '{query}' ({cls}): {e}; gave up after {attempt + 1} tries")
                    else:
                        time.sleep(opts.backoff * 2**attempt + opts.search_pause)
                except SearchError as e:
                    problems.append(f"search '{query}' ({cls}): {e}")
                    break
            if results is None:
                continue
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results))
            tmp.replace(path)
        if not results:
            problems.append(f"search '{query}' ({cls}): no results")
        for result in results:
            cand = to_candidate(result, cls, query)
            if cand and cand.url not in found:
                found[cand.url] = cand
    return list(found.values()), problems


def url_list_candidates(folder: Path, cls: str) -> list[Candidate]:
    path = folder / f"{cls}.txt"
    if not path.exists():
        raise UserError(f"no URL list for class '{cls}': expected {path} (one image URL per line)")
    urls = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if line and line not in urls:
            urls.append(line)
    return [Candidate(url=u, cls=cls, query=path.name) for u in urls]


# ---- downloads ----------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but only to http/https (urllib would also follow ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to non-http URL {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_HttpOnlyRedirects())


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8"})


def _retry_after(err: urllib.error.HTTPError, default: float) -> float:
    try:
        return min(float(err.headers.get("Retry-After", default)), 60.0)
    except (TypeError, ValueError):
        return default


def download(url: str, dest: Path, opts: ScrapeOptions) -> tuple[str, str]:
    """Fetch `url` into `dest` (via dest.part, renamed when complete). Returns (status, detail):
    ("downloaded", "") or e.g. ("http_404", ...), ("too_large", ...), ("timeout", ...)."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        return "bad_scheme", "only http and https URLs are fetched"
    part = dest.with_name(dest.name + ".part")
    status, detail = "network_error", ""
    for attempt in range(opts.retries + 1):
        pause = opts.backoff * 2**attempt
        try:
            status, detail = _fetch_once(url, part, opts)
        except urllib.error.HTTPError as e:
            status, detail = f"http_{e.code}", str(e.reason)[:100]
            if e.code == 429 or e.code >= 500:
                pause = _retry_after(e, pause)
            else:
                break
        except TimeoutError:
            status, detail = "timeout", f"no answer within {opts.timeout:g} s"
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                status, detail = "timeout", f"no answer within {opts.timeout:g} s"
            elif isinstance(e.reason, socket.gaierror):  # no such host, or no network: no retry mends it
                status, detail = "network_error", _os_reason(e.reason, urllib.parse.urlparse(url).netloc)
                break
            else:
                status, detail = "network_error", str(e.reason)[:100]
        except (OSError, ValueError, http.client.HTTPException) as e:  # resets, bad URLs, short reads
            status, detail = "network_error", f"{type(e).__name__}: {e}"[:100]
        else:
            if status == "downloaded":
                part.replace(dest)
                return status, detail
            break  # too_large and friends: retrying will not help
        if attempt < opts.retries:
            time.sleep(pause)
    part.unlink(missing_ok=True)
    return status, detail


def _fetch_once(url: str, part: Path, opts: ScrapeOptions) -> tuple[str, str]:
    deadline = time.monotonic() + 4 * opts.timeout  # a server dripping bytes cannot hold us forever
    with _opener().open(_request(url), timeout=opts.timeout) as resp:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > opts.max_bytes:
            return "too_large", f"{int(length):,} bytes > max_bytes {opts.max_bytes:,}"
        size = 0
        with open(part, "wb") as f:
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > opts.max_bytes:
                    return "too_large", f"more than max_bytes {opts.max_bytes:,}"
                if time.monotonic() > deadline:
                    return "timeout", f"still downloading after {4 * opts.timeout:g} s"
                f.write(chunk)
    return "downloaded", ""


class DownloadLog:
    """downloads/log.csv: the outcome of every URL tried, appended as it happens (thread-safe), so a
    rerun skips what failed for good and retries only what might work now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
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


def _url_key(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:20]


def fetch_one(cand: Candidate, files: Path, log: DownloadLog, opts: ScrapeOptions) -> Outcome:
    """Download (or find in the cache) and fully check one candidate; fall back to its thumbnail."""
    outcome = Outcome("not_tried")
    for url in [cand.url] + ([cand.thumbnail] if cand.thumbnail else []):
        path = files / _url_key(url)
        cached = path.exists()
        if not cached:
            failed = log.permanent_failure(url)
            if failed:
                status, detail = failed
            else:
                status, detail = download(url, path, opts)
                log.add(url, status, detail)
            if status != "downloaded":
                if outcome.status == "not_tried":
                    outcome = Outcome(status, detail, fetched=url)
                continue
        check = check_image(path.read_bytes(), opts.min_size)
        got = Outcome("downloaded", path=path, check=check, cached=cached, fetched=url)
        if check.ok:
            return got
        if outcome.status == "not_tried" or outcome.check is None:
            outcome = got
    return outcome


# ---- the source ---------------------------------------------------------------------------------


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


def _offline(comp: Competition, reasons: list[str]) -> UserError:
    return UserError(
        f"could not reach the image search (network/DNS: {reasons[0]}): check the internet connection "
        f"(and any HTTPS_PROXY), then rerun `make data COMP={comp.slug}`"
    )


def fetch(comp: Competition, raw_dir: Path, provider: SearchProvider | None = None) -> None:
    opts = parse_options(comp)
    cache = raw_dir.parent / "downloads"  # outside raw.partial: survives an interrupted run
    files = cache / "files"
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.glob("*.part"):
        stale.unlink()

    # 1. find candidate URLs per class
    problems: list[str] = []
    candidates: dict[str, list[Candidate]] = {}
    unreachable: list[str] = []
    if opts.provider == "urls":
        for cls in opts.classes:
            candidates[cls] = url_list_candidates(_url_folder(comp, opts), cls)
    else:
        provider = provider or make_provider(opts)
        state: dict[str, float] = {}
        asked = 0
        for cls, queries in opts.classes.items():
            console.print(
                f"searching images for [bold]{escape(cls)}[/]: {escape(', '.join(repr(q) for q in queries))}"
            )
            candidates[cls], trouble = search_class(
                provider, cls, queries, opts, cache / "search", state, unreachable
            )
            problems += trouble
            asked += len(queries)
            if asked >= 2 and len(unreachable) == asked:  # offline: say so once, not per query
                raise _offline(comp, unreachable)
        if unreachable and len(unreachable) == asked:
            raise _offline(comp, unreachable)
    for line in problems:
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)

    # 2. download and check them, concurrently; the cache makes a rerun cheap
    unique: dict[str, Candidate] = {}
    for cands in candidates.values():
        for c in cands:
            unique.setdefault(c.url, c)
    log = DownloadLog(cache / "log.csv")
    outcomes: dict[str, Outcome] = {}
    pool = ThreadPoolExecutor(max_workers=opts.workers)
    try:
        with progress() as bar:
            task = bar.add_task("downloading", total=len(unique), info="")
            futures = {pool.submit(fetch_one, c, files, log, opts): url for url, c in unique.items()}
            pending = set(futures)
            while pending:  # short waits keep Ctrl-C responsive
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    outcomes[futures[fut]] = fut.result()
                    bar.advance(task)
    finally:  # on Ctrl-C: drop what has not started; downloads in flight finish or remove their .part
        pool.shutdown(wait=True, cancel_futures=True)

    # 3. keep real, new images, in search order, first one wins (deterministic despite threads)
    raw_dir.mkdir(parents=True, exist_ok=True)
    deduper = Deduper(opts.near_distance)
    rows = []
    for cls, cands in candidates.items():
        kept = 0
        for c in cands:
            out = outcomes[c.url]
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
            else:
                chk = out.check
                row.update(sha256=chk.sha256, phash=chk.phash, status=chk.status, detail=chk.detail)
                if out.fetched != c.url:
                    row["detail"] = f"thumbnail ({out.fetched})" if chk.ok else chk.detail
                if chk.ok and kept >= opts.count:
                    row.update(status="surplus", detail=f"{opts.count} already kept")
                elif chk.ok:
                    status, of = deduper.check(chk.sha256, chk.phash)
                    if status == "kept":
                        rel = f"{cls}/{_url_key(c.url)}.{EXTENSIONS.get(chk.format, chk.format.lower() or 'img')}"
                        (raw_dir / cls).mkdir(exist_ok=True)
                        _link_or_copy(out.path, raw_dir / rel)
                        deduper.add(chk.sha256, chk.phash, rel)
                        row["file"] = rel
                        kept += 1
                    else:
                        row.update(status=status, detail=f"of {of}")
            rows.append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(raw_dir / "manifest.csv", index=False)
    report(manifest, outcomes, candidates)
    empty = [
        cls for cls in opts.classes if not (manifest[manifest["class"] == cls]["status"] == "kept").any()
    ]
    if empty:
        tried = [o for o in outcomes.values() if o.status != "not_tried"]
        if tried and all(o.check is None and o.status in ("network_error", "timeout") for o in tried):
            raise UserError(
                f"could not download a single image (network errors, e.g. {_short(tried[0].detail, 80)}): "
                f"check the internet connection, then rerun `make data COMP={comp.slug}` (searches are kept)"
            )
        offline = f"; {len(unreachable)} search(es) could not reach the engine" if unreachable else ""
        raise UserError(
            f"no images kept for class(es) {', '.join(empty)} (see the report above{offline}); fix the "
            f"queries/URL lists or wait out a rate limit, then rerun `make data COMP={comp.slug}` "
            "(downloads are kept)"
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.hardlink_to(src)  # the download cache is never rewritten in place
    except OSError:
        shutil.copyfile(src, dst)


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
