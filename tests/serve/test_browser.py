"""A real browser (Debian's chromium, headless, driven by Playwright) uploads an image and sees K result tiles.

Needs /usr/bin/chromium (``.ci/run`` installs Debian's ``chromium`` when it runs as root) and the
Python package ``playwright`` (a dev dependency); without either the test says which is missing
and skips. Loopback only: the browser starts with its background networking off.
"""
import shutil

import pytest

from .conftest import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev dependency playwright is not installed")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no browser: {CHROMIUM} is missing (Debian: apt-get install chromium; .ci/run does it as root)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


def test_upload_shows_k_result_tiles_and_clicking_a_gallery_image_searches(page, assets, index_dir, tmp_path):
    server = Server(assets, index_dir)
    try:
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url + "/")
        page.wait_for_selector("#gallery .tile")  # the gallery listing loaded
        page.wait_for_function("document.getElementById('stats').textContent.startsWith('9 images')")
        page.fill("#k", "5")
        page.set_input_files("#file", str(assets["paths"][4]))
        page.wait_for_function("document.querySelectorAll('#results .tile:not(.query)').length === 5")
        captions = page.locator("#results .tile:not(.query) .cap").all_inner_texts()
        assert captions[0].split() == ["#1", "1.000"] and captions[1] == "class1"  # the image itself, found first
        page.screenshot(path=str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.fill("#k", "3")
        page.locator("#gallery .tile").nth(7).click()  # search by a gallery item
        page.wait_for_function("document.querySelectorAll('#results .tile:not(.query)').length === 3")
        page.check("#attention")
        page.wait_for_function("[...document.querySelectorAll('#results img')].some(i => i.src.includes('attention'))")
        assert not errors, errors
    finally:
        server.stop()
