"""A loopback stand-in for the web, for the scrape source: a tiny HTTP server answering searches and
serving images (or broken ones, redirects, rate limits, slow answers), image results the way ddgs
returns them, the scrape competition's file, and a clock that passes only when the code sleeps.
The `web` fixture (conftest.py) starts a Web for one test."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import yaml

from helpers.images import encode, photo

# the scrape competition's (bjj-vs-aikido) class tints; the cat/dog folders' are helpers.images.TINTS
TINTS = {"bjj": (255, 40, 0), "aikido": (0, 40, 255)}


class Web:
    """A tiny web: routes -> (status, headers, body, delay); counts every request per path, keeps
    their headers, and the most requests in flight at once per Host header."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, dict, bytes, float]]] = {}
        self.searches: dict[str, list[dict]] = {}
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []  # of every request, in order
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()  # per Host, and "*" for all hosts together
        self.on_request = None  # called with the path, e.g. to interrupt the run
        self.lock = threading.Lock()
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                self.host = self.headers.get("Host", "")
                with web.lock:
                    web.headers.append(dict(self.headers))
                    for key in (self.host, "*"):
                        web.active[key] += 1
                        web.peak[key] = max(web.peak[key], web.active[key])
                try:
                    self.answer()
                finally:
                    self.finished()

            def finished(self):
                """This request no longer counts as active: called just before the body is sent, since
                the client may start its next request the moment it has the body, perhaps before
                this thread runs again (counting until after the write made peaks of 3 with 2 slots)."""
                with web.lock:
                    if self.host is not None:
                        web.active.subtract([self.host, "*"])
                        self.host = None

            def answer(self):
                url = urllib.parse.urlparse(self.path)
                with web.lock:
                    web.hits[url.path] += 1
                    n = web.hits[url.path]
                if web.on_request:
                    web.on_request(url.path, n)
                if url.path == "/search":
                    q = urllib.parse.parse_qs(url.query)
                    results = web.searches.get(q["q"][0], [])[: int(q["max_results"][0])]
                    status, headers, body, delay = (
                        200,
                        {"Content-Type": "application/json"},
                        json.dumps(results).encode(),
                        0,
                    )
                else:
                    answers = web.routes.get(url.path, [(404, {}, b"not found", 0)])
                    status, headers, body, delay = answers[min(n, len(answers)) - 1]
                time.sleep(delay)
                try:
                    self.send_response(status)
                    headers = dict(headers)
                    for k, v in headers.items():
                        if k.startswith("X-"):
                            continue
                        self.send_header(k, v)
                    if not headers.pop("X-Stream", None):  # X-Stream: no length, ends when closed
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.finished()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def image(self, path: str, data: bytes, ctype: str = "image/jpeg", **kw) -> str:
        self.routes[path] = [(200, {"Content-Type": ctype}, data, kw.get("delay", 0))]
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def result(url: str, thumb: str = "", w: int | str = 80, h: int | str = 64) -> dict:
    """One image result the way ddgs returns it (width/height arrive as strings, or blank)."""
    return {
        "title": "t",
        "image": url,
        "thumbnail": thumb,
        "url": "https://example.org/page",
        "height": str(h),
        "width": str(w),
        "source": "Bing",
    }


def good_images(web: Web, cls: str, n: int, seed0: int) -> list[dict]:
    tint = TINTS[cls]
    return [result(web.image(f"/{cls}/{i}.jpg", encode(photo(seed0 + i, tint)))) for i in range(n)]


def write_comp(workdir: Path, web: Web, **source) -> None:
    spec = yaml.safe_load((workdir / "competitions" / "bjj-vs-aikido.yaml").read_text())
    spec["source"].update(
        {
            "search_pause": 0,
            "timeout": 0.5,
            "retries": 1,
            "backoff": 0.05,
            "workers": 4,
            "per_host": 4,  # one host stands in for the web: as many at once as there are workers
            "min_size": 32,
            **source,
        }
    )
    spec["n_folds"] = 2
    (workdir / "competitions" / "bjj-vs-aikido.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


class FakeClock:
    """Time that passes only when the code under test sleeps: no test waits for a backoff."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed
