"""Source `scrape` against a loopback HTTP server standing in for the web: search answers, images,
broken images, HTML served as .jpg, an oversized file, a slow response, redirects, rate limits and
duplicates. The download code path is the real one; only the search engine is a stand-in."""

from __future__ import annotations

from collections import Counter

import cv2
import pandas as pd
import pytest

from helpers.images import encode, photo
from helpers.web import TINTS, FakeClock, closed_port, good_images, result, write_comp
from kagglecv.cli import main
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.prepare.layout import prepare
from kagglecv.prepare.sources import scrape, search


def test_scrape_keeps_only_real_unique_images(workdir, web, monkeypatch, capsys):
    bjj = good_images(web, "bjj", 8, 0)
    aik = good_images(web, "aikido", 8, 100)
    dup_bytes = encode(photo(0, TINTS["bjj"]))
    bad = {
        "exact_duplicate": web.image("/bjj/copy.jpg", dup_bytes),
        "near_duplicate": web.image(
            "/bjj/big.png", encode(photo(1, TINTS["bjj"]).resize((160, 128)), "PNG"), "image/png"
        ),
        "not_an_image": web.image("/bjj/page.jpg", b"<!DOCTYPE html><html>403</html>", "image/jpeg"),
        "corrupt": web.image("/bjj/half.jpg", dup_bytes[: len(dup_bytes) // 2]),
        "too_small": web.image("/bjj/tiny.jpg", encode(photo(50, size=(16, 16)))),
        "too_large": web.image("/bjj/huge.jpg", b"\xff" * 300_000),
        "too_large (streamed)": web.image("/bjj/endless.jpg", b"\xff\xd8\xff" + b"\x00" * 400_000),
        "timeout": web.image("/bjj/slow.jpg", encode(photo(51)), delay=2.0),
        "http_404": web.base + "/bjj/gone.jpg",
        "http_500": web.base + "/bjj/error.jpg",
        "bad_scheme": "ftp://127.0.0.1/x.jpg",
    }
    web.routes["/bjj/error.jpg"] = [(500, {}, b"oops", 0)]
    # a redirect, a 429 that then succeeds, a full image that fails but has a thumbnail
    web.image("/bjj/real.jpg", encode(photo(60, TINTS["bjj"])))
    web.routes["/bjj/moved.jpg"] = [(302, {"Location": "/bjj/real.jpg"}, b"", 0)]
    web.routes["/bjj/busy.jpg"] = [
        (429, {"Retry-After": "0"}, b"", 0),
        (200, {}, encode(photo(61, TINTS["bjj"])), 0),
    ]
    thumb = web.image("/bjj/thumb.jpg", encode(photo(62, TINTS["bjj"])))
    extra = [
        result(web.base + "/bjj/moved.jpg"),
        result(web.base + "/bjj/busy.jpg"),
        result(web.base + "/bjj/hotlink.jpg", thumb),
    ]
    web.searches = {
        "brazilian jiu jitsu": bjj[:5] + [result(u) for u in bad.values()],
        "bjj grappling match photo": bjj[5:] + extra,
        "jiu jitsu guard pass gi": bjj[:2],  # the same URLs again: found once
        "aikido": aik + [result(web.base + "/bjj/0.jpg")],  # a bjj picture found for aikido too
        "aikido throw dojo photo": [],
        "aikido hakama technique": [],
    }
    web.routes["/bjj/endless.jpg"][0][1]["X-Stream"] = "1"  # no Content-Length: the cap applies while reading
    write_comp(workdir, web, max_bytes=200_000)
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    assert main(["data", "bjj-vs-aikido"]) == 0
    out = capsys.readouterr().out
    root = workdir / "data" / "bjj-vs-aikido"
    m = pd.read_csv(root / "raw" / "manifest.csv", keep_default_na=False)
    assert list(m.columns[:6]) == ["url", "file", "class", "sha256", "phash", "status"]
    status = dict(zip(m["url"] + "|" + m["class"], m["status"], strict=True))
    for want, url in bad.items():
        assert status[f"{url}|bjj"] == want.split()[0], (want, url)
    for path in ("moved", "busy", "hotlink"):
        assert status[f"{web.base}/bjj/{path}.jpg|bjj"] == "kept", path
    assert status[f"{web.base}/bjj/0.jpg|aikido"] == "exact_duplicate"  # across classes: first wins
    assert web.hits["/bjj/busy.jpg"] == 2 and web.hits["/bjj/error.jpg"] == 2  # one retry each
    assert "no results" in out and "exact_duplicate" in out  # search problems + the per-class table
    kept = m[m["status"] == "kept"]
    assert Counter(kept["class"]) == {"bjj": 11, "aikido": 8}
    assert len(m[m["class"] == "bjj"]) == 8 + len(bad) + 3
    for f in kept["file"]:
        assert (root / "raw" / f).exists()
    images = [*(root / "train").rglob("*.*"), *(root / "test").iterdir()]
    assert len(images) == 19 and len(list((root / "test").iterdir())) == 2
    for p in images:
        assert cv2.imread(str(p)) is not None
    assert sorted(pd.read_csv(root / "solution.csv")["label"]) == ["aikido", "bjj"]

    # a rerun from scratch (FORCE) searches and downloads nothing it has; only transient failures retry
    before = Counter(web.hits)
    assert main(["data", "bjj-vs-aikido", "--force"]) == 0
    again = Counter(web.hits) - before
    assert set(again) <= {"/bjj/slow.jpg", "/bjj/error.jpg"}, again
    m2 = pd.read_csv(root / "raw" / "manifest.csv", keep_default_na=False)
    assert m2["status"].tolist() == m["status"].tolist()


def test_interrupted_download_resumes_without_refetching(workdir, web, monkeypatch, request):
    import _thread
    import signal

    # a user's Ctrl-C reaches Python's own SIGINT handler (pytest-xdist workers ignore SIGINT)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, old))

    web.searches = {
        "brazilian jiu jitsu": good_images(web, "bjj", 10, 0),
        "aikido": good_images(web, "aikido", 10, 100),
    }

    fired = []

    def interrupt(path, n):  # Ctrl-C arrives while the 6th image downloads
        if path != "/search" and not fired and sum(v for k, v in web.hits.items() if k != "/search") >= 6:
            fired.append(path)
            _thread.interrupt_main()

    web.on_request = interrupt
    write_comp(workdir, web, workers=2, classes={"bjj": ["brazilian jiu jitsu"], "aikido": ["aikido"]})
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    assert main(["data", "bjj-vs-aikido"]) == 130
    root = workdir / "data" / "bjj-vs-aikido"
    assert not (root / "raw").exists() and not (root / "prepared.json").exists()
    done = [p for p in (root / "downloads" / "files").iterdir()]
    assert 5 <= len(done) < 20 and not any(p.suffix == ".part" for p in done)

    web.on_request = None
    assert main(["data", "bjj-vs-aikido"]) == 0
    assert (root / "prepared.json").exists()
    images = {k: v for k, v in web.hits.items() if k != "/search"}
    assert len(images) == 20 and set(images.values()) == {1}  # nothing downloaded twice
    assert web.hits["/search"] == 2  # searches cached too


class FakeDDGS:
    """ddgs.DDGS stubbed at its boundary: .images() answers from a script of results/exceptions."""

    script: list = []
    calls: list = []

    def __init__(self, timeout=None, **kw):
        self.timeout = timeout

    def images(self, query, **kw):
        FakeDDGS.calls.append((query, kw))
        step = FakeDDGS.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
def fake_ddgs(monkeypatch):
    import ddgs

    FakeDDGS.script, FakeDDGS.calls = [], []
    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    return FakeDDGS


def test_ddgs_provider_maps_results_and_errors(fake_ddgs, tmp_path):
    from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

    provider = search.DdgsProvider(region="uk-en", backend="bing")
    fake_ddgs.script = [
        [
            {
                "title": "Guard",
                "image": "https://a/1.jpg",
                "thumbnail": "https://t/1.jpg",
                "url": "https://a/page",
                "height": "480",
                "width": "640",
                "source": "Bing",
            },
            {
                "title": "",
                "image": "",
                "thumbnail": "https://t/2.jpg",
                "url": "",
                "height": "",
                "width": "",
                "source": "Bing",
            },
            {"title": "no urls", "image": "", "thumbnail": ""},
        ],
        RatelimitException("202 Ratelimit"),
        TimeoutException("timed out"),
        DDGSException("No results found."),
        DDGSException("https://duckduckgo.com 403 Forbidden"),
    ]
    raw = provider.images("bjj", 5)
    assert fake_ddgs.calls[0] == (
        "bjj",
        {"region": "uk-en", "safesearch": "moderate", "backend": "bing", "max_results": 5},
    )
    cands = [search.to_candidate(r, "bjj", "bjj") for r in raw]
    a, b, none = cands
    assert (a.url, a.thumbnail, a.page, a.title, a.width, a.height) == (
        "https://a/1.jpg",
        "https://t/1.jpg",
        "https://a/page",
        "Guard",
        640,
        480,
    )
    assert (b.url, b.thumbnail, b.width, b.height) == ("https://t/2.jpg", "", None, None)  # thumbnail only
    assert none is None
    with pytest.raises(search.SearchRateLimited):
        provider.images("bjj", 5)
    with pytest.raises(search.SearchTimeout):
        provider.images("bjj", 5)
    assert provider.images("bjj", 5) == []
    with pytest.raises(search.SearchError, match="403"):
        provider.images("bjj", 5)


def test_search_backs_off_on_rate_limits_and_caches(fake_ddgs, tmp_path, workdir):
    from ddgs.exceptions import RatelimitException

    comp = load_competition("bjj-vs-aikido")
    comp.source.update(search_pause=0.2, backoff=0.01, retries=2, count=4)
    opts = scrape.parse_options(comp)
    hit = {
        "image": "https://a/1.jpg",
        "thumbnail": "",
        "url": "",
        "title": "",
        "width": "",
        "height": "",
        "source": "",
    }
    fake_ddgs.script = [
        RatelimitException("ratelimit"),
        [hit],
        RatelimitException("r"),
        RatelimitException("r"),
        RatelimitException("r"),
        [],
    ]
    clock, asked_at = FakeClock(), []

    class Timed(search.DdgsProvider):
        def images(self, query, max_results):
            asked_at.append(clock.now)
            return super().images(query, max_results)

    searcher = scrape.searcher_for(Timed(), opts, tmp_path, clock)
    cands, problems = searcher.search_class("bjj", ["a", "b", "c"])
    gaps = [b - a for a, b in zip(asked_at, asked_at[1:], strict=False)]
    assert min(gaps) >= 0.2 - 1e-9  # a pause before every call after the first
    # backoff 0.01 doubling, plus the pause, after each rate limit; just the pause between queries
    assert clock.sleeps == pytest.approx([0.21, 0.2, 0.21, 0.22, 0.2])
    assert [c.url for c in cands] == ["https://a/1.jpg"]
    assert [q for q, _ in fake_ddgs.calls] == ["a", "a", "b", "b", "b", "c"]
    assert fake_ddgs.calls[0][1]["max_results"] == 2  # count 4 x oversample 1.5 over 3 queries
    assert any("'b'" in p and "gave up after 3 tries" in p for p in problems)
    assert any("'c'" in p and "no results" in p for p in problems)
    # finished searches are cached; the failed one is asked again
    fake_ddgs.script = [[hit]]
    cands, problems = searcher.search_class("bjj", ["a", "b", "c"])
    assert [q for q, _ in fake_ddgs.calls[6:]] == ["b"] and len(cands) == 1


def test_url_list_provider_and_bad_specs(workdir, web):
    urls = workdir / "competitions" / "urls" / "bjj-vs-aikido"
    urls.mkdir(parents=True)
    for cls, seed in (("bjj", 0), ("aikido", 100)):
        lines = ["# one URL per line"] + [r["image"] for r in good_images(web, cls, 6, seed)]
        (urls / f"{cls}.txt").write_text("\n".join(lines + [lines[1], ""]))
    write_comp(workdir, web, provider="urls")
    prepare(load_competition("bjj-vs-aikido"))
    m = pd.read_csv(workdir / "data" / "bjj-vs-aikido" / "raw" / "manifest.csv")
    assert len(m) == 12 and (m["status"] == "kept").all() and set(m["query"]) == {"bjj.txt", "aikido.txt"}

    comp = load_competition("bjj-vs-aikido")
    comp.source["cout"] = 3
    with pytest.raises(UserError, match="Did you mean 'count'"):
        scrape.parse_options(comp)
    comp.source.pop("cout")
    comp.source["count"] = "many"  # typed by the one options mechanism: one line, not a TypeError
    with pytest.raises(UserError, match="'count' must be int, got 'many'"):
        scrape.parse_options(comp)
    comp.source["count"] = 0
    with pytest.raises(UserError, match=r"bjj-vs-aikido.yaml: source.count, workers, per_host"):
        scrape.parse_options(comp)
    comp.source["count"] = 3
    comp.source["classes"] = {"bjj": ["x"]}
    with pytest.raises(UserError, match="two or more classes"):
        scrape.parse_options(comp)
    (urls / "aikido.txt").unlink()
    comp = load_competition("bjj-vs-aikido")
    with pytest.raises(UserError, match="no URL list for class 'aikido'"):
        prepare(comp, force=True)


def test_nothing_kept_is_a_clear_error(workdir, web, monkeypatch, capsys):
    web.searches = {"aikido": good_images(web, "aikido", 6, 100)}
    write_comp(workdir, web, classes={"bjj": ["nothing here"], "aikido": ["aikido"]})
    monkeypatch.setenv(search.SEARCH_URL_ENV, web.base + "/search")
    assert main(["data", "bjj-vs-aikido"]) == 2
    out = capsys.readouterr().out
    assert "no images kept for class(es) bjj" in out and "rerun" in out


def test_offline_search_is_said_once(workdir, web, monkeypatch, capsys):
    classes = {"bjj": ["jiu jitsu [gi]", "bjj"], "aikido": ["aikido"]}
    write_comp(workdir, web, classes=classes)
    monkeypatch.setenv(search.SEARCH_URL_ENV, f"http://127.0.0.1:{closed_port()}/search")
    assert main(["data", "bjj-vs-aikido"]) == 2
    out = capsys.readouterr().out
    assert "searching images for bjj: 'jiu jitsu [gi]', 'bjj'" in out  # brackets are not markup
    text = " ".join(out.split())
    assert text.count("could not reach the image search") == 1 and "refused the connection" in text
    assert "check the internet connection" in text and "rerun `make data COMP=bjj-vs-aikido`" in text
    assert "warning:" not in out and "fix the queries" not in out
    assert "searching images for aikido" not in out  # two searches that never got out are enough
    root = workdir / "data" / "bjj-vs-aikido"
    assert not (root / "raw").exists() and not (root / "prepared.json").exists()


DNS_ERROR = (  # what ddgs 9 raises with no network, verbatim
    "DNSError: DNSError('error sending request for url (https://www.bing.com/images/async?q=aikido&async=1"
    "&first=1&count=35) > error resolving DNS > DNS error: no records found for Query { name: "
    'Name("www.bing.com."), query_type: A, query_class: IN }\')'
)


def test_ddgs_network_errors_are_short(fake_ddgs, tmp_path, workdir):
    from ddgs.exceptions import DDGSException

    provider = search.DdgsProvider()
    fake_ddgs.script = [DDGSException(DDGSException(DNS_ERROR)), DDGSException("x " * 300)]
    with pytest.raises(search.SearchUnreachable) as err:
        provider.images("aikido", 5)
    assert str(err.value) == "could not reach the search engine (DNS lookup failed)"
    with pytest.raises(search.SearchError) as err:
        provider.images("aikido", 5)
    assert len(str(err.value)) <= 120 and "\n" not in str(err.value)

    # one query out of reach among others: a one-line problem for it, the rest searched as usual
    comp = load_competition("bjj-vs-aikido")
    comp.source.update(search_pause=0, retries=2)
    hit = {"image": "https://a/1.jpg", "thumbnail": "", "url": "", "title": "", "width": "", "height": ""}
    fake_ddgs.script = [DDGSException(DNS_ERROR), [hit]]
    searcher = scrape.searcher_for(provider, scrape.parse_options(comp), tmp_path, FakeClock())
    cands, problems = searcher.search_class("bjj", ["a", "b"])
    assert [c.url for c in cands] == ["https://a/1.jpg"]
    assert problems == ["search 'a' (bjj): could not reach the search engine (DNS lookup failed)"]
    assert searcher.unreachable == ["could not reach the search engine (DNS lookup failed)"]
    assert [q for q, _ in fake_ddgs.calls[2:]] == ["a", "b"]  # not retried: no network is no network
