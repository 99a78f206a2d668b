"""The service under a hostile client: unbounded work, 500s that should be 4xx, files swapped on disk,
silently wrong values, leaked paths, an index folder appended to behind the service's back."""
import os
import threading
import time

import numpy as np
import pytest

from retrieval.cli import build_index
from retrieval.index import load_index

from .conftest import FAST, png_bytes


def add(client, colour=(250, 5, 5), label="red"):
    response = client.post("/items", files=[("images", ("new.png", png_bytes(colour, (48, 48)), "image/png"))],
                           data={"labels": [label]})
    assert response.status_code == 201, response.text
    return response.json()["ids"][0]


def vector(index_dir, i=5):
    return load_index(index_dir)[0].reconstruct(i).tolist()


@pytest.mark.parametrize("count", [17, 10_000])
def test_json_queries_are_capped_like_uploads(client_for, index_dir, count):
    client = client_for(index_dir)
    response = client.post("/search", json={"embedding": [[0.1] * 16] * count})
    assert response.status_code == 400 and "at most 16 vectors" in response.json()["error"]
    assert len(client.post("/search", json={"embedding": [[0.1] * 16] * 16}).json()["queries"]) == 16


def test_healthz_answers_while_the_largest_json_query_runs(client_for, index_dir):
    client = client_for(index_dir)
    service = client.app.state.service
    building = threading.Event()
    real_hits = service._hits

    def slow_hits(*args):  # result building made slow: it must not hold the event loop
        building.set()
        time.sleep(2.0)
        return real_hits(*args)

    service._hits = slow_hits
    largest = {"embedding": [list(np.random.default_rng(0).normal(size=16))] * 16, "k": service.settings.max_k}
    answers = []
    worker = threading.Thread(target=lambda: answers.append(client.post("/search", json=largest)))
    worker.start()
    assert building.wait(10)
    start = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    assert time.perf_counter() - start < 1.0
    worker.join()
    assert answers[0].status_code == 200 and len(answers[0].json()["queries"]) == 16
    assert [len(q["results"]) for q in answers[0].json()["queries"]] == [9] * 16  # k clamped to the gallery


BAD_JSON = [
    ("ragged", {"embedding": [[1.0, 2.0], [3.0]]}, 400, "same length"),
    ("ragged 128+127", {"embedding": [[0.5] * 128, [0.5] * 127]}, 400, "same length"),
    ("strings", {"embedding": ["0.1"] * 16}, 422, "number"),
    ("booleans", {"embedding": [True] * 16}, 422, "number"),
    ("k zero", {"embedding": [0.1] * 16, "k": 0}, 422, "k"),
    ("k over max", {"embedding": [0.1] * 16, "k": 51}, 422, "k"),
    ("k text", {"embedding": [0.1] * 16, "k": "3"}, 422, "k"),
    ("unknown field", {"embedding": [0.1] * 16, "K": 3}, 422, "K"),
    ("empty", {"embedding": []}, 400, "at least one"),
    ("empty rows", {"embedding": [[]]}, 400, "at least one"),
]


@pytest.mark.parametrize("name, body, status, words", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_queries_are_4xx_not_500_nor_silently_changed(client_for, index_dir, name, body, status, words):
    client = client_for(index_dir, max_k=50)
    response = client.post("/search", params={"k": 5}, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_json_k_and_integer_numbers_are_used_as_given(client_for, index_dir):
    client = client_for(index_dir)
    v = [int(round(10 * x)) for x in vector(index_dir)]  # ints are numbers
    def hits(body):
        return len(client.post("/search", params={"k": 5}, json=body).json()["queries"][0]["results"])

    assert hits({"embedding": v, "k": 2}) == 2 and hits({"embedding": v}) == 5 and hits({"embedding": v, "k": None}) == 5


@pytest.mark.parametrize("swap", ["moved away", "directory", "symlink to /etc/passwd", "fifo"])
def test_a_gallery_file_swapped_on_disk_is_404_json(client_for, index_dir, swap):
    client = client_for(index_dir)
    new_id = add(client)
    path = next((index_dir.parent / "idx.uploads").iterdir())
    assert client.get(f"/items/{new_id}/image").status_code == 200
    path.unlink()
    if swap == "directory":
        path.mkdir()
    elif swap == "symlink to /etc/passwd":
        path.symlink_to("/etc/passwd")
    elif swap == "fifo":
        os.mkfifo(path)
    for url in (f"/items/{new_id}/image", f"/items/{new_id}/attention"):
        response = client.get(url)
        assert response.status_code == 404 and set(response.json()) == {"error"}, (url, response.text)
        assert "root:" not in response.text
    assert client.get("/healthz").status_code == 200


def test_paths_are_file_names_unless_exposed(client_for, index_dir, assets):
    hidden = client_for(index_dir)
    v = vector(index_dir)
    texts = [hidden.get("/items").text, hidden.get("/items/4").text, hidden.get("/stats").text,
             hidden.post("/search", json={"embedding": v}).text, hidden.get("/items/4/neighbours").text]
    for text in texts:
        assert str(assets["root"]) not in text and str(index_dir.parent) not in text and "/tmp" not in text
    assert hidden.get("/items/4").json()["path"] == assets["paths"][4].name
    assert hidden.get("/stats").json()["checkpoint"] == assets["ckpt"].name
    shown = client_for(index_dir, expose_paths=True)
    assert shown.get("/items/4").json()["path"] == str(assets["paths"][4])
    assert shown.get("/stats").json()["checkpoint"] == str(assets["ckpt"])


def test_every_error_has_the_one_shape(client_for, index_dir):
    client = client_for(index_dir)
    unknown = client.get("/no/such/route")
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    wrong = client.put("/items/1")
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "DELETE"}  # every route of the path
    options = client.options("/items")
    assert options.status_code == 405 and set(options.headers["allow"].split(", ")) == {"GET", "POST"}
    invalid = client.get("/items", params={"limit": "many"})
    assert invalid.status_code == 422 and set(invalid.json()) == {"error"} and "limit" in invalid.json()["error"]


def test_the_openapi_document_lists_every_status_and_the_upload_bodies(client_for, index_dir):
    client = client_for(index_dir, max_k=50)
    paths = client.get("/openapi.json").json()["paths"]
    assert "/static/app.js" not in paths and "/" not in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "408", "413", "422"} <= codes, (method, path)
            if method in ("post", "delete"):
                assert "403" in codes, (method, path)
            for code in codes - {"200", "201"}:
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorBody"), (method, path, code)
    assert {"401", "403", "415"} <= set(paths["/items"]["post"]["responses"])
    for path in ("/items", "/attention", "/search"):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["images"]["items"]["format"] == "binary", path
    k = next(p for p in paths["/search"]["post"]["parameters"] if p["name"] == "k")["schema"]
    assert k["minimum"] == 1 and k["maximum"] == 50
    assert client.get("/docs").status_code == 404  # no Swagger UI from a CDN; /openapi.json is the document


def test_ids_are_the_ones_written_when_the_folder_is_appended_to_behind_the_service(client_for, index_dir, assets,
                                                                                    tmp_path):
    client = client_for(index_dir)
    assert client.get("/healthz").json()["count"] == 9
    three = tmp_path / "three.csv"
    three.write_text("path,label\n" + "".join(f"{p},cli\n" for p in assets["paths"][:3]))
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(index_dir), "--csv", str(three),
                             "--append", *FAST]) == 0
    assert client.get("/items/10").json()["label"] == "cli"  # reads follow the folder too
    new_id = add(client, label="served")
    assert new_id == 12  # 9 + 3 from the command line, not 9 from the service's memory
    assert client.get(f"/items/{new_id}").json()["label"] == "served"
    assert client.get("/items/10").json()["label"] == "cli" and client.get("/healthz").json()["count"] == 13
    _, metadata, _ = load_index(index_dir)
    assert metadata.loc[12, "label"] == "served" and len(metadata) == 13


def test_an_items_upload_is_removed_with_it_and_orphans_are_collected(client_for, index_dir):
    client = client_for(index_dir)
    uploads = index_dir.parent / "idx.uploads"
    first, twin, other = add(client), add(client), add(client, (5, 250, 5), "green")  # twin: the same picture
    assert len(list(uploads.iterdir())) == 2
    client.delete(f"/items/{first}")
    assert len(list(uploads.iterdir())) == 2  # the twin still shows it
    client.delete(f"/items/{twin}")
    assert len(list(uploads.iterdir())) == 1
    assert client.get(f"/items/{other}/image").status_code == 200
    orphan = uploads / ("ab" * 32 + ".png")
    orphan.write_bytes(b"left by a crash")
    foreign = uploads / "notes.txt"  # not a name the service gives: never touched
    foreign.write_text("mine")
    client_for(index_dir)  # start-up
    assert not orphan.exists() and foreign.exists()
    assert client_for(index_dir).get(f"/items/{other}/image").status_code == 200
