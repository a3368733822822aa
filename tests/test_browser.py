"""The report as a reader sees it: a real headless Chromium (Debian's package, driven by
Playwright) must report console errors and images that do not decode. The smoke pipeline test
opens the real report with the same check and keeps its screenshot under outputs/ci/.
Without a Chromium these skip, unless OPTLIB_REQUIRE_BROWSER is set (CI sets it after installing one)."""
import base64
import io
import os

import pytest

from optlib.results import browser


def need_browser():
    if browser.find_chromium() is None or not _has_playwright():
        if os.environ.get("OPTLIB_REQUIRE_BROWSER"):
            pytest.fail("OPTLIB_REQUIRE_BROWSER is set but no Chromium/Playwright was found")
        pytest.skip("no Chromium (apt-get install chromium) or Playwright (the dev extra)")


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def test_browser_check_catches_console_errors_and_undecodable_images(tmp_path):
    need_browser()
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, format="PNG")
    good = base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "page.html"
    page.write_text(f"""<!doctype html><html><head><title>t</title></head><body>
        <img alt="good" src="data:image/png;base64,{good}">
        <img alt="truncated" src="data:image/png;base64,{good[:20]}">
        <script>console.error("boom");</script></body></html>""")
    res = browser.check_page(page, screenshot=tmp_path / "shot.png")
    assert res.images == 2 and res.broken_images == ["truncated"]
    assert any("boom" in e for e in res.console_errors) and not res.ok
    with Image.open(res.screenshot) as shot:
        assert shot.size == (1280, 900)
    clean = tmp_path / "clean.html"
    clean.write_text(f'<!doctype html><html><body><img alt="good" src="data:image/png;base64,{good}"></body></html>')
    assert browser.check_page(clean).ok


def test_report_prints_to_pdf_with_a_page_per_section(tmp_path):
    """The report's own print rules: A4 landscape, the final round on the first page with the
    title, every later section on a page of its own; the text is there to read (pypdf, not the
    browser, reads it back)."""
    need_browser()
    from pathlib import Path

    from pypdf import PdfReader

    template = Path(browser.__file__).with_name("templates") / "report.html.j2"
    style = template.read_text().split("<style>")[1].split("</style>")[0]
    page = tmp_path / "r.html"
    page.write_text(f"""<!doctype html><html><head><style>{style}</style></head><body><h1>Report</h1>
        <h2 id="final">Final round</h2><div class="answer">Recommended: the fast one</div>
        <h2 id="chapters">Chapters</h2><p>chapter text</p><h2 id="machine">Machine</h2><p>machine text</p></body></html>""")
    pdf = browser.print_pdf(page, tmp_path / "r.pdf")
    reader = PdfReader(pdf)
    assert len(reader.pages) == 3
    first = reader.pages[0]
    assert float(first.mediabox.width) > float(first.mediabox.height)  # landscape
    texts = [p.extract_text() for p in reader.pages]
    assert "Recommended: the fast one" in texts[0] and "chapter text" in texts[1] and "machine text" in texts[2]
