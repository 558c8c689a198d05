"""Finding image URLs for a class: the search providers and the URL lists.

    searcher = Searcher(make_provider(...), cache=downloads / "search", want=225, retries=3, ...)
    candidates, problems = searcher.search_class("bjj", ["brazilian jiu jitsu", "bjj guard"])

A provider answers ddgs-shaped results: `DdgsProvider` (DuckDuckGo / Bing image search via the
`ddgs` package) or `JsonEndpointProvider` (KAGGLECV_SEARCH_URL: an HTTP endpoint answering
`?q=<query>&max_results=<n>` with ddgs-shaped JSON -- a self-hosted search, or the tests' loopback
stand-in; the user named it, so it is not held to the download's address rules). `url_list_candidates`
reads `<class>.txt` files of one URL per line instead. The `Searcher` pauses between calls, backs off on
rate limits and caches finished searches, so a rerun asks the engine nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from rich.markup import escape

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.prepare.sources.download import USER_AGENT, Clock, os_cause, os_reason, short, ssl_context

SEARCH_URL_ENV = "KAGGLECV_SEARCH_URL"


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
            raise SearchError(short(text)) from None
        return list(results or [])


class JsonEndpointProvider:
    """A search endpoint answering `GET <url>?q=..&max_results=..` with a JSON list of ddgs-shaped
    results (KAGGLECV_SEARCH_URL): a self-hosted search, or the tests' loopback stand-in."""

    name = "json-endpoint"

    def __init__(self, url: str, timeout: float = 10):
        self.url, self.timeout = url, timeout

    def images(self, query: str, max_results: int) -> list[dict[str, Any]]:
        params = {"q": query, "max_results": max_results}
        try:
            resp = httpx.get(
                self.url,
                params=params,
                timeout=self.timeout,
                follow_redirects=True,
                headers={"User-Agent": USER_AGENT},
                verify=ssl_context(),
            )
        except httpx.TimeoutException:
            raise SearchTimeout(f"no answer from {self.url} in {self.timeout:g} s") from None
        except httpx.ConnectError as e:
            cause = os_cause(e)
            host = httpx.URL(self.url).host or self.url
            why = os_reason(cause, host) if cause else f"{host}: {short(str(e), 80)}"
            raise SearchUnreachable(why) from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:  # e.g. the connection dropped mid-answer
            raise SearchError(f"{self.url}: {short(str(e) or type(e).__name__)}") from None
        if resp.status_code == 429:
            raise SearchRateLimited(f"HTTP 429 from {self.url}")
        if resp.status_code >= 400:
            raise SearchError(f"HTTP {resp.status_code} from {self.url}")
        try:
            results = json.loads(resp.content)
        except ValueError:
            raise SearchError(f"{self.url} did not answer with JSON") from None
        if isinstance(results, dict):
            results = results.get("results", [])
        return list(results)


def make_provider(*, name: str, region: str, safesearch: str, backend: str, timeout: float) -> SearchProvider:
    """The engine the options name, or the endpoint KAGGLECV_SEARCH_URL names instead."""
    endpoint = os.environ.get(SEARCH_URL_ENV)
    if endpoint:
        console.print(
            f"[yellow]search:[/] {SEARCH_URL_ENV} is set, searching {escape(endpoint)} instead of {name}"
        )
        return JsonEndpointProvider(endpoint, timeout=timeout)
    return DdgsProvider(region, safesearch, backend, timeout=timeout)


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


class Searcher:
    """Asks one provider for every query of every class: a pause of `pause` seconds between calls
    (engines rate-limit), `retries` more tries with doubling backoff on rate limits and timeouts,
    finished searches cached in `cache`. `unreachable` collects why, for every query whose search
    never reached the engine (all of them: the machine is offline)."""

    def __init__(
        self,
        provider: SearchProvider,
        *,
        cache: Path,
        want: float,
        retries: int,
        backoff: float,
        pause: float,
        clock: Clock | None = None,
    ) -> None:
        self.provider, self.cache, self.want = provider, cache, want
        self.retries, self.backoff, self.pause = retries, backoff, pause
        self.clock = clock or Clock()
        self.last = -math.inf  # when the engine was last asked
        self.unreachable: list[str] = []

    def search_class(self, cls: str, queries: list[str]) -> tuple[list[Candidate], list[str]]:
        """Candidates for one class from all its queries, in order, each URL once; and the problems
        worth a warning line."""
        per_query = max(1, math.ceil(self.want / max(1, len(queries))))
        found: dict[str, Candidate] = {}
        problems: list[str] = []
        for query in queries:
            key = hashlib.sha1(f"{self.provider.name}|{query}|{per_query}".encode()).hexdigest()[:16]
            path = self.cache / f"{key}.json"
            if path.exists():
                results = json.loads(path.read_text())
            else:
                results = self._ask(query, per_query, problems, f"search '{query}' ({cls})")
                if results is None:
                    continue
                self.cache.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp, results=results: tmp.write_text(json.dumps(results)))
            if not results:
                problems.append(f"search '{query}' ({cls}): no results")
            for result in results:
                cand = to_candidate(result, cls, query)
                if cand and cand.url not in found:
                    found[cand.url] = cand
        return list(found.values()), problems

    def _ask(self, query: str, per_query: int, problems: list[str], what: str) -> list | None:
        """The engine's results for one query, or None (the problem appended) when it gave none."""
        for attempt in range(self.retries + 1):
            wait = self.pause - (self.clock.monotonic() - self.last)
            if wait > 0:
                self.clock.sleep(wait)
            before, self.last = self.last, self.clock.monotonic()
            try:
                return self.provider.images(query, per_query)
            except SearchUnreachable as e:
                self.last = before  # it never got there: no need to pause before the next one
                problems.append(f"{what}: {e}")
                self.unreachable.append(str(e))
                return None
            except (SearchRateLimited, SearchTimeout) as e:
                if attempt == self.retries:
                    problems.append(f"{what}: {e}; gave up after {attempt + 1} tries")
                else:
                    self.clock.sleep(self.backoff * 2**attempt + self.pause)
            except SearchError as e:
                problems.append(f"{what}: {e}")
                return None
        return None


def url_list_candidates(folder: Path, cls: str) -> list[Candidate]:
    """The `urls` provider: `<folder>/<cls>.txt`, one image URL per line, # comments."""
    path = folder / f"{cls}.txt"
    if not path.exists():
        raise UserError(f"no URL list for class '{cls}': expected {path} (one image URL per line)")
    urls = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if line and line not in urls:
            urls.append(line)
    return [Candidate(url=u, cls=cls, query=path.name) for u in urls]
