"""Open a report in a real headless browser, as a reader would: console errors, images that do not
decode, and a screenshot of the first screen; print it to PDF with the same browser.

Playwright (the `dev` extra) drives a Chromium that is already installed (Debian's `chromium`
package, or any Chrome on PATH): nothing is downloaded. `find_chromium` says which one, or None.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass
class BrowserCheck:
    console_errors: list[str] = field(default_factory=list)  # console messages of type error, and page errors
    broken_images: list[str] = field(default_factory=list)  # <img> whose source did not decode (alt or src start)
    images: int = 0
    title: str = ""
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.console_errors and not self.broken_images


def find_chromium() -> str | None:
    """The Chromium executable to drive: $OPTLIB_CHROMIUM, else the first of CANDIDATES on PATH."""
    path = os.environ.get("OPTLIB_CHROMIUM")
    if path:
        return path if Path(path).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _launch(p):
    exe = find_chromium()
    if exe is None:
        raise RuntimeError(f"no Chromium found (looked for {', '.join(CANDIDATES)} and $OPTLIB_CHROMIUM); "
                           "on Debian: apt-get install chromium")
    return p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise RuntimeError("the browser needs Playwright: pip install -e '.[dev]'") from e
    return sync_playwright


def print_pdf(html_path: str | Path, pdf_path: str | Path, timeout_s: float = 120.0) -> Path:
    """Print `html_path` to `pdf_path` as Chromium prints it (print media: the page size, margins and
    page breaks are the page's own @page and @media print rules), written whole or not at all.
    RuntimeError when no Chromium or Playwright is found."""
    sync_playwright = _playwright()
    pdf_path = Path(pdf_path)
    tmp = pdf_path.with_name(f".{pdf_path.name}.tmp")
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=timeout_s * 1e3)
            page.pdf(path=str(tmp), print_background=True, prefer_css_page_size=True)
        finally:
            browser.close()
    tmp.replace(pdf_path)
    return pdf_path


def check_page(html_path: str | Path, screenshot: str | Path | None = None, width: int = 1280,
               height: int = 900, timeout_s: float = 60.0) -> BrowserCheck:
    """Load `html_path` (file://) in headless Chromium, wait for it to finish loading, and report
    its console errors and the images that did not decode; with `screenshot`, save the first
    screen (width x height) there as PNG. RuntimeError when no Chromium or Playwright is found."""
    sync_playwright = _playwright()
    result = BrowserCheck()
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.console_errors.append(str(e)))
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=timeout_s * 1e3)
            images = page.evaluate("""() => Array.from(document.images).map(i => ({
                ok: i.complete && i.naturalWidth > 0, name: i.alt || i.src.slice(0, 60)}))""")
            result.images = len(images)
            result.broken_images = [i["name"] for i in images if not i["ok"]]
            result.title = page.title()
            if screenshot is not None:
                result.screenshot = Path(screenshot)
                result.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(result.screenshot))
        finally:
            browser.close()
    return result
