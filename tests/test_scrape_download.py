"""The scrape's downloads against loopback servers: which addresses may be fetched (every hop, the
address that was checked), the deadline at the socket, the per-host limit, the User-Agent, Retry-After
through an injected clock, a full disk, and cached bodies that are no image."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers.images import encode, photo
from helpers.web import TINTS, FakeClock, good_images, write_comp
from kagglecv import __version__
from kagglecv.cli import main
from kagglecv.core.errors import UserError
from kagglecv.prepare.sources import download, download_cache, scrape, search
from kagglecv.prepare.sources.search import Candidate


def downloader(**kw) -> download.Downloader:
    args = {"timeout": 0.5, "retries": 0, "backoff": 0.0, "max_bytes": 1_000_000, "per_host": 4}
    return download.Downloader(**{**args, **kw})


@pytest.mark.parametrize(
    "ip, problem",
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # IPv4 in IPv6 is judged by the IPv4 address
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4 around 127.0.0.1
        ("169.254.169.254", "a link-local address"),  # cloud metadata
        ("::ffff:169.254.169.254", "a link-local address"),
        ("64:ff9b::a9fe:a9fe", "a link-local address"),  # NAT64 around 169.254.169.254
        ("fe80::1%eth0", "a link-local address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("100.64.0.1", "not a global address"),  # carrier-grade NAT
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
    ],
)
def test_only_global_addresses_are_fetched(ip, problem):
    assert download.address_problem(ip) == problem
    # the tests' setting lets loopback through, and nothing else
    assert download.address_problem(ip, allow_loopback=True) == (
        None if problem == "a loopback address" else problem
    )


def test_loopback_is_refused_without_the_setting(web, monkeypatch, tmp_path):
    monkeypatch.delenv(download.ALLOW_LOOPBACK_ENV)
    url = web.image("/a.jpg", encode(photo(0)))
    port = url.split(":")[2].split("/")[0]
    with downloader() as dl:
        for u in (url, f"http://localhost:{port}/a.jpg", f"http://[::ffff:127.0.0.1]:{port}/a.jpg"):
            status, detail = dl.download(u, tmp_path / "a")
            assert status == "refused_address" and "a loopback address" in detail, (u, detail)
    assert web.hits == {} and not list(tmp_path.iterdir())  # never connected, nothing written


def test_every_redirect_hop_is_checked(web, monkeypatch, tmp_path):
    real = socket.getaddrinfo

    def resolve(host, *args, **kw):  # a name that points at the cloud metadata address
        return real("169.254.169.254" if host == "metadata.test" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    targets = {
        "/meta.jpg": ("http://169.254.169.254/latest/meta-data/", "refused_address"),
        "/name.jpg": ("http://metadata.test/latest/meta-data/", "refused_address"),
        "/lan.jpg": ("http://[::ffff:10.0.0.1]/x.jpg", "refused_address"),
        "/ftp.jpg": ("ftp://127.0.0.1/x.jpg", "bad_scheme"),
        "/loop.jpg": ("/loop.jpg", "too_many_redirects"),
    }
    for path, (location, _) in targets.items():
        web.routes[path] = [(302, {"Location": location}, b"", 0)]
    t0, details = time.monotonic(), {}
    with downloader(timeout=5) as dl:
        for path, (_, want) in targets.items():
            status, details[path] = dl.download(web.base + path, tmp_path / path[1:])
            assert status == want, (path, status, details[path])
    assert time.monotonic() - t0 < 3  # refused before connecting: no timeout waited out
    assert details["/name.jpg"] == "metadata.test is a link-local address (169.254.169.254)"
    assert details["/lan.jpg"] == "::ffff:10.0.0.1 is a private address (::ffff:10.0.0.1)"
    assert not list(tmp_path.iterdir())


def test_connects_to_the_address_that_was_checked(web, monkeypatch, tmp_path):
    """DNS rebinding: the name answers loopback (allowed here) once, then a private address. The
    download must use the first answer, not look the name up again when it connects."""
    real, lookups = socket.getaddrinfo, []

    def rebinding(host, *args, **kw):
        if host == "rebind.test":
            lookups.append(host)
            host = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    data = encode(photo(1))
    url = web.image("/r.jpg", data).replace("127.0.0.1", "rebind.test")
    with downloader() as dl:
        assert dl.download(url, tmp_path / "r") == ("downloaded", "")
    assert (tmp_path / "r").read_bytes() == data and lookups == ["rebind.test"]
    assert web.headers[-1]["Host"] == url.split("/")[2]  # the name, not the address, goes to the server


def drip_server(interval: float) -> tuple[str, list[int]]:
    """A server that sends its whole answer, headers and body, one byte every `interval` seconds."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100\r\n\r\n" + b"\xff" * 100

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                try:
                    for i in range(len(answer)):
                        conn.sendall(answer[i : i + 1])
                        time.sleep(interval)
                except OSError:  # the client gave up: good
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/drip.jpg", accepted


def test_a_slow_drip_cannot_hold_a_worker(monkeypatch, tmp_path):
    monkeypatch.setenv(download.ALLOW_LOOPBACK_ENV, "1")
    url, accepted = drip_server(0.05)  # every read gets a byte well within the 0.25 s timeout
    t0 = time.monotonic()
    with downloader(timeout=0.25, retries=2) as dl:
        status, detail = dl.download(url, tmp_path / "drip")
    took = time.monotonic() - t0
    assert (status, detail) == ("timeout", "still downloading after 1 s")  # 4 x timeout, not ~7 s
    assert 0.9 < took < 3 and len(accepted) == 1  # the deadline, once: no retry of a dripping server
    assert not list(tmp_path.iterdir())  # no .part left behind


def test_retry_after_waits_on_the_clock_capped_at_a_minute(web, tmp_path):
    data = encode(photo(2))
    web.routes["/busy.jpg"] = [(429, {"Retry-After": "30"}, b"", 0), (200, {}, data, 0)]
    web.routes["/down.jpg"] = [(503, {"Retry-After": "86400"}, b"", 0), (200, {}, data, 0)]
    web.routes["/flaky.jpg"] = [(500, {}, b"", 0), (502, {}, b"", 0), (200, {}, data, 0)]
    clock, t0 = FakeClock(), time.monotonic()
    with downloader(retries=2, backoff=1.5, clock=clock) as dl:
        for name in ("busy", "down", "flaky"):
            assert dl.download(f"{web.base}/{name}.jpg", tmp_path / name) == ("downloaded", "")
    assert clock.sleeps == [30, 60, 1.5, 3.0] and time.monotonic() - t0 < 2  # slept on the clock only


def test_per_host_limit_and_user_agent(web, workdir, tmp_path):
    for i in range(6):
        web.image(f"/{i}.jpg", encode(photo(i)), delay=0.15)
    hosts = (web.base, web.base.replace("127.0.0.1", "localhost"))
    cands = {
        cls: [Candidate(f"{h}/{i}.jpg", cls) for i in range(6)] for cls, h in zip(TINTS, hosts, strict=True)
    }
    opts = scrape.ScrapeOptions(classes={"bjj": ["q"], "aikido": ["q"]}, workers=8, per_host=2, min_size=16)
    log = download_cache.DownloadLog(tmp_path / "log.csv")
    outcomes = scrape.download_all(cands, opts, files=tmp_path, log=log)
    assert all(o.check is not None and o.check.ok for o in outcomes.values())
    port = web.base.rsplit(":", 1)[1]
    assert web.peak[f"127.0.0.1:{port}"] == 2 and web.peak[f"localhost:{port}"] == 2
    assert web.peak["*"] >= 3  # a limit per host, not for all of them together
    agents = {h["User-Agent"] for h in web.headers}
    assert agents == {download.USER_AGENT} and download.USER_AGENT.startswith(f"kagglecv/{__version__} (")


def test_cached_bodies_that_are_no_image_are_deleted(web, workdir, monkeypatch):
    page = web.image("/page.jpg", b"<!DOCTYPE html><html>403</html>")
    tiny = web.image("/tiny.jpg", encode(photo(50, size=(16, 16))))
    web.searches = {
        "brazilian jiu jitsu": good_images(web, "bjj", 4, 0) + [{"image": page}, {"image": tiny}],
        "aikido": good_images(web, "aikido", 4, 100),
    }
    write_comp(workdir, web, classes={"bjj": ["brazilian jiu jitsu"], "aikido": ["aikido"]})
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    assert main(["data", "bjj-vs-aikido"]) == 0
    root = workdir / "data" / "bjj-vs-aikido"
    files = root / "downloads" / "files"
    assert (
        not (files / download_cache.url_key(page)).exists()
        and not (files / download_cache.url_key(tiny)).exists()
    )
    assert len(list(files.iterdir())) == 8
    log = pd.read_csv(root / "downloads" / "log.csv")
    assert log.groupby("url")["status"].last()[page] == "not_an_image"
    # a rerun neither fetches them again nor changes their verdict
    hits = web.hits["/page.jpg"] + web.hits["/tiny.jpg"]
    assert main(["data", "bjj-vs-aikido", "--force"]) == 0
    assert web.hits["/page.jpg"] + web.hits["/tiny.jpg"] == hits
    m = pd.read_csv(root / "raw" / "manifest.csv").set_index("url")
    assert m.loc[page, "status"] == "not_an_image" and m.loc[tiny, "status"] == "too_small"


def test_a_full_disk_stops_the_scrape_in_one_line(web, workdir, monkeypatch, capsys):
    web.searches = {
        "brazilian jiu jitsu": good_images(web, "bjj", 3, 0),
        "aikido": good_images(web, "aikido", 3, 9),
    }
    write_comp(workdir, web, classes={"bjj": ["brazilian jiu jitsu"], "aikido": ["aikido"]})
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    real_open = open

    def full(path, mode="r", *args, **kw):  # every download lands on a full disk
        if str(path).endswith(".part"):
            return real_open("/dev/full", mode, *args, **kw)
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(download, "open", full, raising=False)
    assert main(["data", "bjj-vs-aikido"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "saving downloads: cannot write" in out and "the disk is full" in out and "Traceback" not in out
    root = workdir / "data" / "bjj-vs-aikido"
    log = root / "downloads" / "log.csv"
    assert not log.exists() or "network_error" not in log.read_text()  # not mistaken for the network
    assert not (root / "raw").exists() and not list((root / "downloads" / "files").glob("*.part"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_disk_errors_are_named_as_such(web, tmp_path):
    part = tmp_path / "a.part"
    part.symlink_to("/dev/full")
    with downloader() as dl, pytest.raises(UserError, match=f"cannot write {part}: the disk is full"):
        dl.download(web.image("/a.jpg", encode(photo(3))), tmp_path / "a")
    assert not part.is_symlink() and not (tmp_path / "a").exists()  # the partial file is removed


def test_no_image_reachable_says_network_and_proxy(web, workdir, monkeypatch, capsys):
    from helpers.web import closed_port

    gone = f"http://127.0.0.1:{closed_port()}"
    web.searches = {q: [{"image": f"{gone}/{q}/{i}.jpg"} for i in range(3)] for q in ("bjj", "aikido")}
    write_comp(workdir, web, classes={"bjj": ["bjj"], "aikido": ["aikido"]}, retries=0)
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # used by the search, not by downloads
    assert main(["data", "bjj-vs-aikido"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "could not download a single image (network errors, e.g. 127.0.0.1 refused the connection)" in out
    assert "downloads do not go through a proxy" in out and "Traceback" not in out


def tls_server(tmp_path: Path, name: str, body: bytes) -> tuple[int, Path]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for `name`: (port, the certificate)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server.server_address[1], cert


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make a certificate")
def test_https_connects_to_the_checked_address_and_verifies_the_name(monkeypatch, tmp_path):
    data = encode(photo(4))
    port, cert = tls_server(tmp_path, "pinned.test", data)
    real, lookups = socket.getaddrinfo, []

    def resolve(host, *args, **kw):
        if host == "pinned.test":
            lookups.append(host)
            host = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setenv(download.ALLOW_LOOPBACK_ENV, "1")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    download.ssl_context.cache_clear()
    try:
        with downloader() as dl:
            assert dl.download(f"https://pinned.test:{port}/a.jpg", tmp_path / "a") == ("downloaded", "")
            # the certificate is checked against the name in the URL, not the address connected to
            status, detail = dl.download(f"https://127.0.0.1:{port}/a.jpg", tmp_path / "b")
    finally:
        download.ssl_context.cache_clear()
    assert (tmp_path / "a").read_bytes() == data and lookups == ["pinned.test"]
    assert status == "network_error" and "certificate" in detail.lower(), detail


def test_a_shared_thumbnail_is_fetched_once(web, tmp_path):
    """Eight results whose full images are gone and whose thumbnail is the same URL: eight workers
    at once must not write the same cache file together (one downloads it, the others find it)."""
    thumb = web.image("/thumb.jpg", encode(photo(5)), delay=0.1)
    cands = {
        "bjj": [Candidate(f"{web.base}/gone{i}.jpg", "bjj", thumbnail=thumb) for i in range(8)],
        "aikido": [],
    }
    opts = scrape.ScrapeOptions(classes={"bjj": ["q"], "aikido": ["q"]}, workers=8, per_host=8, min_size=16)
    outcomes = scrape.download_all(
        cands, opts, files=tmp_path, log=download_cache.DownloadLog(tmp_path / "log.csv")
    )
    assert all(o.check is not None and o.check.ok and o.fetched == thumb for o in outcomes.values())
    assert web.hits["/thumb.jpg"] == 1 and sum(o.cached for o in outcomes.values()) == 7


@pytest.mark.parametrize(
    "url, status, detail",
    [
        ("http://[::1", "bad_url", "Invalid IPv6 URL"),  # a traceback in a worker before
        ("http://a..b/x.jpg", "bad_url", "'a..b' is no valid host name"),
        ("http:///x.jpg", "bad_url", "no host in the URL"),
        ("file:///etc/passwd", "bad_scheme", "only http and https URLs are fetched"),
        ("http://2130706433/x.jpg", "refused_address", "2130706433 is a loopback address (127.0.0.1)"),
    ],
)
def test_urls_a_search_can_return_are_one_status_each(url, status, detail, tmp_path):
    with downloader() as dl:
        assert dl.download(url, tmp_path / "x") == (status, detail)
