"""End to end in a real headless browser: upload two photos, move the n slider, click Run, see the result and the
correspondence panel. Uses Debian's chromium (``.ci/install_browser.sh``) driven by Playwright; the page's
screenshot is saved to ``test-artifacts/app.png``."""

from __future__ import annotations

import io
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from test_app import REPO, free_port, save_photo  # also puts the repository root, where app.py is, on sys.path

import app  # noqa: E402
from coat_hf.pretrained import UNTRAINED_MODEL  # noqa: E402

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no chromium at /usr/bin/chromium: run .ci/install_browser.sh (CI does)"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo = app.COATDemo(app.load_pipeline(UNTRAINED_MODEL))
    examples = app.build_examples(tmp_path_factory.mktemp("examples"))
    page = app.serve(demo.build(examples), "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, page
    page.close()


@pytest.fixture
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1100})
        finally:
            browser.close()


def fetch_image(page, selector: str) -> PIL.Image.Image:
    """The picture an <img> in the page shows, downloaded from the app."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as response:
        return PIL.Image.open(io.BytesIO(response.read())).convert("RGB")


def open_app_with(page, url: str, content, style) -> None:
    """Load the page and upload the content and style files."""
    page.goto(url)
    page.wait_for_selector("#run")
    page.locator("#content input[type=file]").set_input_files(str(content))
    page.locator("#style input[type=file]").set_input_files(str(style))
    page.wait_for_selector("#style img")


def test_upload_slide_run_shows_result_and_matches(served, browser_page, tmp_path):
    demo, server = served
    page, k = browser_page, demo.num_modulation_layers
    content = save_photo(tmp_path / "content.png", 1, size=256)
    style = save_photo(tmp_path / "style.png", 2, size=256)

    open_app_with(page, server.local_url, content, style)
    page.wait_for_selector("#content img")

    # Move the slider with the keyboard, as a person would: to the right end, then two steps back.
    slider = page.locator("#n input[type=range]")
    slider.focus()
    slider.press("End")
    slider.press("ArrowLeft")
    slider.press("ArrowLeft")
    n = k - 2
    assert page.locator("#n input[type=number]").input_value() == str(n)

    page.locator("#run").click()
    for selector in ("#result img", "#matches img", "#heatmap img"):
        page.wait_for_selector(selector, timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#count input').value) > 0", timeout=30_000)

    # The page shows what the app's function gives for the slider's n (an app that may read tmp_path: the
    # served one accepts uploads only).
    reference = type(demo)(demo.pipe, input_folders=[tmp_path])
    result, matches, count, heatmap = reference.transfer(str(content), str(style), n, demo.default_scale())
    assert np.array_equal(np.asarray(fetch_image(page, "#result")), np.asarray(result))
    assert fetch_image(page, "#matches").size == matches.size
    assert fetch_image(page, "#heatmap").size == heatmap.size
    assert int(page.locator("#count input").input_value()) == count
    assert page.get_by_text("lower n = more of the style", exact=False).first.is_visible()

    page.locator("#sweep").click()
    page.wait_for_function(f"document.querySelectorAll('#strip img').length >= {k + 1}", timeout=120_000)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def test_bad_file_shows_a_readable_error_and_the_page_keeps_working(served, browser_page, tmp_path):
    """A file named like a photo that is not one passes the page's file-type check; the server's message shows."""
    _, server = served
    page = browser_page
    broken = tmp_path / "broken.png"
    broken.write_text("not a photo")
    style = save_photo(tmp_path / "style.png", 2, size=128)

    open_app_with(page, server.local_url, broken, style)
    page.locator("#run").click()
    page.get_by_text("is not an image PIL can read").first.wait_for(timeout=30_000)

    page.locator("#content button[aria-label='Remove Image']").first.click()
    page.locator("#content input[type=file]").set_input_files(str(save_photo(tmp_path / "content.png", 1, size=128)))
    page.wait_for_selector("#content img")
    page.locator("#run").click()
    page.wait_for_selector("#result img", timeout=60_000)
