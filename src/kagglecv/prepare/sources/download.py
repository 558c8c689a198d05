"""Fetching image URLs found on the open web without being steered: what may be connected to, how
long one download may take, how many at once per host, and what a failure is called.

    with Downloader(timeout=15, retries=3, backoff=1, max_bytes=15_000_000, per_host=2) as dl:
        status, detail = dl.download(url, dest)        # ("downloaded", "") or why not

The HTTP client is httpx (timeouts, redirects and their limit, keep-alive, TLS). kagglecv's own checks
sit in httpx's network backend, the one place every connection is made, redirects included:
- the host is resolved once, every address that is not global (loopback, private, link-local such as
  the cloud metadata address 169.254.169.254, multicast, reserved, and IPv6's equivalents, IPv4
  wrapped in IPv6 included) is refused, and the socket connects to the address that was checked:
  no second lookup a DNS-rebinding server could answer differently. TLS still checks the name.
  KAGGLECV_ALLOW_LOOPBACK=1 (or true/yes/on) lets loopback through (the tests' stand-in web); nothing else.
- every socket read and write gets at most what is left of the download's deadline (4 x timeout),
  so a server that drips a byte at a time -- in the headers or the body -- cannot hold a worker.
Retries with backoff (429 / 5xx / network errors, Retry-After honoured up to a minute), the size cap
and the one-line outcome are ours: httpx retries only failed connects. The sleep is injectable
(`Clock`), so tests do not wait. A file that cannot be written (full disk, read-only, permissions)
stops the scrape with one line: it is no network error and no rerun of the URL mends it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpcore
import httpx

from kagglecv import __version__
from kagglecv.core.errors import UserError
from kagglecv.core.files import disk_error
from kagglecv.core.flags import switch

ALLOW_LOOPBACK_ENV = "KAGGLECV_ALLOW_LOOPBACK"
USER_AGENT = f"kagglecv/{__version__} (Kaggle image-competition starter; downloads image search results)"
MAX_REDIRECTS = 10
DEADLINE_TIMEOUTS = 4  # one download may take this many `timeout`s in all
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 reached through a NAT64 gateway


@dataclass
class Clock:
    """Time as the scrape sees it: tests pass one whose sleep only advances `monotonic`."""

    monotonic: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)


# ---- what may be connected to -------------------------------------------------------------------


def address_problem(ip: str, allow_loopback: bool = False) -> str | None:
    """Why kagglecv must not connect to `ip` ("a private address"), or None for a global one.
    IPv4 inside IPv6 (::ffff:a.b.c.d, 6to4, NAT64) is judged by the IPv4 address it carries."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # fe80::1%eth0: the zone is no part of it
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour
        if inner is None and addr in _NAT64:
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            return address_problem(str(inner), allow_loopback)
    if addr.is_loopback:
        return None if allow_loopback else "a loopback address"
    for flag, what in (
        (addr.is_link_local, "a link-local address"),
        (addr.is_multicast, "a multicast address"),
        (addr.is_unspecified, "an unspecified address"),
        (addr.is_reserved, "a reserved address"),
        (addr.is_private, "a private address"),
        (not addr.is_global, "not a global address"),
    ):
        if flag:
            return what
    return None


def allow_loopback() -> bool:
    """KAGGLECV_ALLOW_LOOPBACK read as every switch is: false/no/off/0 is off; a word that is neither
    on nor off is an error, not a guess."""
    return switch(os.environ.get(ALLOW_LOOPBACK_ENV, ""), ALLOW_LOOPBACK_ENV)


class AddressRefused(Exception):
    """The host resolves only to addresses kagglecv does not connect to."""


class DeadlineExceeded(Exception):
    """The download as a whole ran past its deadline."""


# The deadline of the download running in this thread (None: no deadline). Read at every socket
# operation, so a kept-alive connection made by another download obeys this one's deadline.
_deadline: ContextVar[float | None] = ContextVar("kagglecv_download_deadline", default=None)


def _within_deadline(timeout: float | None) -> float | None:
    end = _deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded()
    return left if timeout is None else min(timeout, left)


@contextmanager
def _deadline_named() -> Iterator[None]:
    """A timeout that happened because the deadline, not the per-read timeout, ran out says so."""
    try:
        yield
    except httpcore.TimeoutException:
        _within_deadline(None)
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read, write and TLS handshake waits at most what the deadline leaves."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _deadline_named():
            return self.inner.read(max_bytes, _within_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _deadline_named():
            self.inner.write(buffer, _within_deadline(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        with _deadline_named():
            return _DeadlineStream(
                self.inner.start_tls(ssl_context, server_hostname, _within_deadline(timeout))
            )

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    """Every connection httpx makes: resolve once, refuse what is not global, connect to the
    address that was checked (httpx still sends the name in Host and checks it in TLS)."""

    def __init__(self, allow_loopback: bool) -> None:
        self.allow_loopback = allow_loopback

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:  # httpx reports it as a failed connect, the cause kept
            raise httpcore.ConnectError(f"DNS lookup of {host} failed") from e
        except UnicodeError:  # a name IDNA cannot encode (a..b): no lookup can succeed
            raise httpx.InvalidURL(f"{host!r} is no valid host name") from None
        allowed, refused = [], ""
        for *_, sockaddr in infos:
            problem = address_problem(sockaddr[0], self.allow_loopback)
            if problem:
                refused = refused or f"{host} is {problem} ({sockaddr[0]})"
            elif sockaddr[0] not in allowed:
                allowed.append(sockaddr[0])
        if not allowed:
            raise AddressRefused(refused or f"{host} has no address")
        for i, ip in enumerate(allowed):
            try:
                stream = super().connect_tcp(
                    ip, port, _within_deadline(timeout), local_address, socket_options
                )
                return _DeadlineStream(stream)
            except httpcore.ConnectError:
                if i == len(allowed) - 1:
                    raise
        raise AssertionError("unreachable")


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """httpx's default TLS settings (certifi's roots, or SSL_CERT_FILE's), built once per process:
    loading the roots takes a tenth of a second."""
    return httpx.create_ssl_context()


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport over a pool that connects through `_GuardedBackend`. httpx has no
    parameter for a network backend, so the pool it built is replaced by one that has it (the
    loopback-refusal tests fail if a later httpx stops using `_pool`)."""

    def __init__(self, backend: httpcore.NetworkBackend, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context(), trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


# ---- one download -------------------------------------------------------------------------------


def short(text: str, limit: int = 120) -> str:
    """One line of an error's text: exceptions from HTTP clients run to hundreds of characters."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 2] + " …"


def os_cause(err: BaseException) -> OSError | None:
    """The OSError under an HTTP client's exception (httpx wraps httpcore wraps the socket's)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def os_reason(err: OSError, host: str) -> str:
    if isinstance(err, socket.gaierror):
        return f"DNS lookup of {host} failed"
    if isinstance(err, ConnectionRefusedError):
        return f"{host} refused the connection"
    return f"{host}: {short(err.strerror or str(err) or type(err).__name__, 80)}"


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return min(float(resp.headers.get("Retry-After", default)), 60.0)
    except (TypeError, ValueError):  # an HTTP date: not worth parsing for a minute at most
        return default


@contextmanager
def _writing(part: Path) -> Iterator[IO[bytes]]:
    """`part` open for writing; a full disk or a folder that cannot be written ends the scrape with
    one line (every other download would fail the same way), never a 'network error'."""
    try:
        with open(part, "wb") as f:
            yield f
    except OSError as e:
        e.filename = e.filename or str(part)
        line = disk_error(e)
        if line is None:
            raise
        raise UserError(f"saving downloads: {line}") from None


class Slots:
    """At most `per_key` threads at a time hold one key: downloads per host, workers per URL."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.lock = threading.Lock()
        self.slots: dict[str, threading.Semaphore] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self.lock:
            slot = self.slots.setdefault(key, threading.BoundedSemaphore(self.per_key))
        with slot:
            yield


class Downloader:
    """One httpx client for a whole scrape (thread-safe, connections kept alive), its checks as
    hooks in the backend, and the retry loop. Use as a context manager."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_bytes: int,
        per_host: int,
        clock: Clock | None = None,
    ) -> None:
        self.timeout, self.retries, self.backoff, self.max_bytes = timeout, retries, backoff, max_bytes
        self.deadline = DEADLINE_TIMEOUTS * timeout
        self.clock = clock or Clock()
        self.hosts = Slots(per_host)
        transport = _GuardedTransport(_GuardedBackend(allow_loopback()), httpx.Limits())
        self.client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            # identity: the bytes stored are the bytes of the image, and the size cap counts them
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8", "Accept-Encoding": "identity"},
            trust_env=False,  # through a proxy the address checked would be the proxy's
        )

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def download(self, url: str, dest: Path) -> tuple[str, str]:
        """Fetch `url` into `dest` (via dest.part, renamed when complete). Returns (status, detail):
        ("downloaded", "") or e.g. ("http_404", ...), ("too_large", ...), ("refused_address", ...)."""
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
        except ValueError as e:  # http://[::1 and friends
            return "bad_url", short(str(e), 100)
        if parts.scheme.lower() not in ("http", "https"):
            return "bad_scheme", "only http and https URLs are fetched"
        if not host:
            return "bad_url", "no host in the URL"
        part = dest.with_name(dest.name + ".part")
        status, detail = "network_error", ""
        try:
            for attempt in range(self.retries + 1):
                with self.hosts.hold(host):
                    status, detail, pause = self._attempt(url, part, self.backoff * 2**attempt)
                if status == "downloaded":
                    part.replace(dest)
                    break
                if pause is None or attempt == self.retries:
                    break
                self.clock.sleep(pause)
        finally:  # whatever happened, no half file stays behind
            part.unlink(missing_ok=True)
        return status, detail

    def _attempt(self, url: str, part: Path, pause: float) -> tuple[str, str, float | None]:
        """One try: (status, detail, seconds to wait before the next try, None: no retry mends it)."""
        token = _deadline.set(time.monotonic() + self.deadline)
        try:
            return self._get(url, part, pause)
        except DeadlineExceeded:
            return "timeout", f"still downloading after {self.deadline:g} s", None
        except AddressRefused as e:
            return "refused_address", short(str(e), 100), None
        except httpx.TooManyRedirects:
            return "too_many_redirects", f"more than {MAX_REDIRECTS} redirects", None
        except httpx.UnsupportedProtocol as e:  # a redirect to ftp:// and the like
            return "bad_scheme", short(f"redirect to a non-http URL: {e}", 100), None
        except httpx.TimeoutException:
            return "timeout", f"no answer within {self.timeout:g} s", pause
        except httpx.TransportError as e:
            cause, host = os_cause(e), urllib.parse.urlsplit(url).hostname or url
            if isinstance(cause, socket.gaierror):  # no such host, or no network: no retry mends it
                return "network_error", os_reason(cause, host), None
            why = os_reason(cause, host) if cause else short(f"{type(e).__name__}: {e}", 100)
            return "network_error", why, pause
        except httpx.InvalidURL as e:
            return "bad_url", short(str(e), 100), None
        finally:
            _deadline.reset(token)

    def _get(self, url: str, part: Path, pause: float) -> tuple[str, str, float | None]:
        with self.client.stream("GET", url) as resp:
            code = resp.status_code
            if not 200 <= code < 300:
                again = code == 429 or code >= 500
                return f"http_{code}", resp.reason_phrase[:100], _retry_after(resp, pause) if again else None
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                return "too_large", f"{int(length):,} bytes > max_bytes {self.max_bytes:,}", None
            size = 0
            with _writing(part) as f:
                for chunk in resp.iter_raw():
                    size += len(chunk)
                    if size > self.max_bytes:
                        return "too_large", f"more than max_bytes {self.max_bytes:,}", None
                    f.write(chunk)
        return "downloaded", "", None
