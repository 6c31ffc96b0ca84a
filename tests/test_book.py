"""The book builds with warnings as errors, and a real browser renders it with every image and no errors."""

import functools
import http.server
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import REPO

SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part["chapters"]]
    return pages


@pytest.fixture(scope="module")
def built_book(quick_book):
    return quick_book


@pytest.mark.slow
def test_book_builds_every_toc_page(built_book):
    assert (built_book / "index.html").exists()
    for page in _toc_pages():
        html = (built_book / f"{page}.html").read_text()
        assert "Traceback" not in html, f"{page}: a traceback is printed in the page"
        assert "<h1" in html and "main-content" in html, f"{page}: no page content"
    chapter0 = (built_book / "notebooks" / "00_machine_limits.html").read_text()
    assert chapter0.count("<img") >= 4
    assert "cdn.jsdelivr" not in chapter0 and "mathjax/tex-chtml.js" in chapter0


class _Links(HTMLParser):
    """Collect a page's link targets and element ids."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.hrefs.append(a.get("src") or a.get("href"))


@pytest.mark.slow
def test_every_internal_link_of_the_built_book_resolves(built_book):
    pages = {p.resolve(): _Links() for p in built_book.rglob("*.html") if "_static" not in p.parts}
    for p, parser in pages.items():
        parser.feed(p.read_text(encoding="utf-8"))
    broken = []
    for p, parser in pages.items():
        for href in parser.hrefs:
            u = urlparse(href)
            if u.scheme or href.startswith(("mailto:", "data:", "javascript:")):
                continue
            target = (p.parent / u.path).resolve() if u.path else p
            if not target.exists():
                broken.append(f"{p.name} -> {href} (no such file)")
            elif u.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if u.fragment not in ids:
                    broken.append(f"{p.name} -> {href} (no such anchor)")
    assert broken == [], "\n".join(broken[:40])


@pytest.fixture(scope="module")
def server(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# per page: the images, the tables against the text column, tracebacks and bookkeeping lines left in the page
_PAGE_CHECKS = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const col = article.getBoundingClientRect();
  const tables = Array.from(article.querySelectorAll('table')).map((t) => {
    let box = t, el = t.parentElement;
    while (el && el !== article) {
      const ox = getComputedStyle(el).overflowX;
      if (ox === 'auto' || ox === 'scroll') { box = el; break; }
      el = el.parentElement;
    }
    const r = box.getBoundingClientRect();
    const ids = Array.from(t.querySelectorAll('th, td')).map((c) => c.innerText.trim())
      .filter((x) => /^[a-z]+-[0-9][0-9]$/.test(x));
    return {right: r.right, left: r.left, scrolls: box !== t, clipped: box.scrollWidth > box.clientWidth + 1,
            text: t.innerText.slice(0, 60), ids: ids};
  });
  return {
    col_left: col.left, col_right: col.right,
    page_scrolls: document.documentElement.scrollWidth > window.innerWidth + 1,
    wide: Array.from(article.querySelectorAll('p, li, blockquote, pre, img'))
      .filter((e) => e.getBoundingClientRect().right > col.right + 2 && !e.closest('table, .highlight, .output'))
      .map((e) => e.tagName + ': ' + e.innerText.slice(0, 40)),
    broken: Array.from(document.images).filter((i) => !(i.naturalWidth > 0)).map((i) => i.src),
    tables: tables,
    text: article.innerText,
    outputs: Array.from(article.querySelectorAll('.cell_output')).map((e) => e.innerText).join(' '),
    empty: Array.from(article.querySelectorAll('section')).filter((s) => !Array.from(s.children).some((c) =>
      !/^H[1-6]$/.test(c.tagName) && c.tagName !== 'SECTION' && c.innerText.trim() !== ''))
      .map((s) => (s.querySelector('h1, h2, h3, h4') || s).innerText.slice(0, 60)),
  };
}"""

FIT_PAGES = ("book/ledger", "book/findings", "book/decisions")
"""Pages that fit the text column at 1280 px with nothing to scroll sideways (on a chapter's page, no table scrolls)."""
CHAPTER_CLAIM_PREFIX = {"01_fair_serialization": "fs-", "02_rpc_breakdown": "rpc-", "03_broadcast": "bc-",
                        "04_pipeline": "pl-", "05_tensor_parallel": "tp-"}  # fmt: skip


def _quote_fonts(page) -> dict[str, int]:
    """Return the platform fonts Chromium used for the glyphs of the ledger's first quote (family -> glyphs drawn)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "article blockquote p"})["nodeId"]
    if not node:
        return {}
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    return {f["familyName"]: f["glyphCount"] for f in fonts}


def _built_pages(html: Path) -> list[str]:
    """Every page of the built book (not Sphinx's own search and index pages, which hold no content of ours, nor the
    root index.html, a redirect to the introduction that Chromium asks a /favicon.ico for; it is opened on its own)."""
    skip = {"search", "genindex"}
    return sorted(str(p.relative_to(html).with_suffix("")) for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_") and p.stem not in skip
                  and p.relative_to(html) != Path("index.html"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.browser
def test_rendered_book_in_chromium(server, built_book):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is required in CI (.ci/run installs it)")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    pages = _built_pages(built_book)
    assert set(_toc_pages()) <= set(pages), f"TOC pages missing from the build: {set(_toc_pages()) - set(pages)}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        try:
            for page_path in pages:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors, foreign, failed = [], [], []
                page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.on("request", lambda r, foreign=foreign: foreign.append(r.url)
                        if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:") else None)  # fmt: skip
                page.on("requestfailed", lambda r, failed=failed: failed.append(r.url))
                page.on("response", lambda r, failed=failed: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                page.goto(f"{server}/{page_path}.html", wait_until="networkidle")
                page.wait_for_function("Array.from(document.images).every(i => i.complete)")
                name = page_path.replace("/", "_")
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                got = page.evaluate(_PAGE_CHECKS)
                if page_path == "book/ledger":  # the source's quotes are Chinese: a CJK font draws them, not boxes
                    fonts = _quote_fonts(page)
                    if not any("CJK" in f for f in fonts):
                        problems.append(f"{page_path}: the quotes are not drawn with a CJK font (fonts used: {fonts})")
                if got["broken"]:
                    problems.append(f"{page_path}: images that did not load: {got['broken']}")
                if errors:
                    problems.append(f"{page_path}: console errors: {errors}")
                if foreign:
                    problems.append(f"{page_path}: requests off this machine: {foreign}")
                if failed:
                    problems.append(f"{page_path}: failed requests: {failed}")
                if "Traceback" in got["text"]:
                    problems.append(f"{page_path}: a Traceback is printed in the page")
                if re.search(r"\d+ summary rows written to", got["outputs"]):  # the run's log line belongs in the log
                    problems.append(f"{page_path}: a bookkeeping line is printed in the page")
                for t in got["tables"]:
                    if t["right"] > got["col_right"] + 2:
                        problems.append(f"{page_path}: a table runs {t['right'] - got['col_right']:.0f} px past the text "
                                        f"column and does not scroll inside it: {t['text']!r}")  # fmt: skip
                if got["empty"]:
                    problems.append(f"{page_path}: headings with nothing under them before the next: {got['empty']}")
                if got["page_scrolls"]:
                    problems.append(f"{page_path}: the page scrolls sideways at 1280 px")
                if page_path in FIT_PAGES or page_path.startswith("notebooks/"):  # no table cut off, none to scroll
                    for t in got["tables"]:
                        if t["clipped"]:
                            problems.append(f"{page_path}: a table needs sideways scrolling at 1280 px: {t['text']!r}")
                if page_path in FIT_PAGES:  # what a reviewer reads first: no text past the column either
                    if got["wide"]:
                        problems.append(f"{page_path}: text runs past the column at 1280 px: {got['wide'][:3]}")
                prefix = CHAPTER_CLAIM_PREFIX.get(Path(page_path).name)
                if prefix and not any(i.startswith(prefix) for t in got["tables"] for i in t["ids"]):
                    problems.append(f"{page_path}: no ledger table (claims {prefix}..)")
                page.close()
            index = browser.new_page()
            index.goto(f"{server}/index.html", wait_until="networkidle")
            # the root page sends the reader on to the introduction
            assert urlparse(index.url).path == f"/{_toc_pages()[0]}.html", index.url
            index.screenshot(path=str(SCREENSHOTS / "index.png"))
        finally:
            browser.close()
    assert problems == [], "\n".join(problems)
