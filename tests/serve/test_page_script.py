"""The page's script (static/app.js) under Node with a stub DOM: what the page shows after a failed upload
and for an unlabelled query. The real-browser test (test_browser.py) needs chromium; this needs only node."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import retrieval.serve

SCRIPT = Path(retrieval.serve.__file__).parent / "static" / "app.js"

HARNESS = r"""
const elements = {};
function element(id) {
  return elements[id] ??= {id, children: [], hidden: false, textContent: "", value: "5", checked: false,
    classList: {add() {}, remove() {}}, appendChild(c) { this.children.push(c); },
    replaceChildren() { this.children = []; }};
}
globalThis.document = {getElementById: element, createElement: () => element("x" + Math.random())};
globalThis.FormData = class { append() {} };
globalThis.URL = {createObjectURL: () => "blob:query"};
const hit = {rank: 1, id: 4, score: 1, label: "class1", path: "1.png"};
let searchFails = false;
globalThis.fetch = async (url) => {
  if (url.startsWith("/search") && searchFails) {
    return {ok: false, statusText: "Bad", json: async () => ({error: "not an image"})};
  }
  if (url.startsWith("/search")) {
    return {ok: true, json: async () => ({queries: [{query: "q.png", results: [hit]}]})};
  }
  if (url.startsWith("/stats")) {
    return {ok: true, json: async () => ({count: 9, dim: 16, index_type: "Flat", checkpoint_sha256: "ab".repeat(32)})};
  }
  return {ok: true, json: async () => ({total: 0, items: []})};
};
const tick = () => new Promise((r) => setTimeout(r, 0));
(async () => {
  SCRIPT_TEXT
  await tick();
  await byUpload({name: "q.png"});
  const afterUpload = {tiles: elements.results.children.length, title: elements.resultsTitle.textContent,
                       hidden: elements.resultsTitle.hidden};
  searchFails = true;
  await byUpload({name: "bad.png"});
  const afterFailure = {tiles: elements.results.children.length, hidden: elements.resultsTitle.hidden,
                        error: elements.error.textContent};
  console.log(JSON.stringify({afterUpload, afterFailure}));
})();
"""


def test_a_failed_upload_clears_the_old_results_and_an_unlabelled_query_promises_no_colours(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the page script is checked in a browser by test_browser.py instead")
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS.replace("SCRIPT_TEXT", SCRIPT.read_text()))
    run = subprocess.run([node, str(harness)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["afterUpload"]["tiles"] == 2 and not seen["afterUpload"]["hidden"]  # the query and its hit
    assert "green" not in seen["afterUpload"]["title"] and "no label" in seen["afterUpload"]["title"]
    assert seen["afterFailure"] == {"tiles": 0, "hidden": True, "error": "not an image"}
