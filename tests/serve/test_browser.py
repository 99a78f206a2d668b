"""A real browser (Debian's chromium, headless, driven by Playwright) uploads an image and sees K result tiles.

Needs /usr/bin/chromium (``.ci/run`` installs Debian's ``chromium`` when it runs as root) and the
Python package ``playwright`` (a dev dependency); without either the test says which is missing
and skips. Loopback only: the browser starts with its background networking off.
"""
import re
import shutil

import httpx
import pytest

from .conftest import Server, png_bytes

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
    # Waits go through locators, not wait_for_function: a string predicate is an eval, which the
    # page's Content-Security-Policy refuses (as it should).
    from playwright.sync_api import expect

    server = Server(assets, index_dir)
    try:
        errors, blocked = [], []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(server.url + "/")
        page.wait_for_selector("#gallery .tile")  # the gallery listing loaded
        expect(page.locator("#stats")).to_have_text(re.compile(r"^9 images"))
        page.fill("#k", "5")
        page.set_input_files("#file", str(assets["paths"][4]))
        hits = page.locator("#results .tile:not(.query)")
        expect(hits).to_have_count(5)
        captions = page.locator("#results .tile:not(.query) .cap").all_inner_texts()
        assert captions[0].split() == ["#1", "1.000"] and captions[1] == "class1"  # the image itself, found first
        assert "green" not in page.locator("#resultsTitle").inner_text()  # an upload has no label to compare
        page.screenshot(path=str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.fill("#k", "3")
        page.locator("#gallery .tile").nth(7).click()  # search by a gallery item (a same-origin POST-free read)
        expect(hits).to_have_count(3)
        page.check("#attention")
        expect(page.locator("#results img[src*='attention']")).to_have_count(1)
        expect(page.locator("#results img[src*='kind=gradcam']")).to_have_count(1)  # Grad-CAM unless gates are asked

        hits.nth(1).click()  # why does the second result match? both maps, and the score split by branch
        expect(page.locator("#explain")).to_be_visible()
        expect(page.locator("#explainText")).to_contain_text("cosine")
        drawn = page.evaluate("""() => ['explainQuery', 'explainResult'].map((id) => {
            const data = document.getElementById(id).getContext('2d').getImageData(0, 0, 224, 224).data;
            let red = 0; for (let i = 0; i < data.length; i += 4) red += data[i] > data[i + 2] + 40 ? 1 : 0;
            return red; })""")
        assert all(count > 50 for count in drawn), drawn  # a map is drawn over each image (red: adds to the score)
        page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)

        page.set_input_files("#file", files=[{"name": "bad.png", "mimeType": "image/png", "buffer": b"not an image"}])
        expect(page.locator("#error")).to_contain_text("bad.png")
        expect(hits).to_have_count(0)  # the previous results are gone with the failed query
        assert not errors, errors
        assert not blocked, blocked  # the page itself needs nothing the CSP refuses
    finally:
        server.stop()


def test_a_page_on_another_origin_cannot_add_or_delete(page, assets, index_dir):
    """The attack as a browser runs it from another port: a no-cors multipart POST (no preflight), and a DELETE."""
    import base64
    import http.server
    import threading

    server = Server(assets, index_dir)
    evil = f"""<!doctype html><script>
      const form = new FormData();
      const png = Uint8Array.from(atob("{base64.b64encode(png_bytes()).decode()}"), (c) => c.charCodeAt(0));
      form.append("images", new Blob([png], {{type: "image/png"}}), "x.png");  // a real image: only the guard stops it
      Promise.allSettled([
        fetch("{server.url}/items", {{method: "POST", mode: "no-cors", body: form}}),
        fetch("{server.url}/items/1", {{method: "DELETE"}}),
      ]).then(() => {{ document.title = "sent"; }});
    </script>""".encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(evil)

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        page.wait_for_function("document.title === 'sent'")
        assert server.count() == 9
        assert httpx.get(f"{server.url}/items/1", timeout=10).status_code == 200
        out = server.stop()
        # the POST reached the server and was refused; the DELETE needs a CORS preflight, which fails
        assert "POST /items 403" in out and "DELETE /items/1 200" not in out
    finally:
        other.shutdown()
        if server.proc.poll() is None:
            server.stop()
