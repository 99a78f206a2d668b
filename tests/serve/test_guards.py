"""The request guards under a hostile client: the requests a browser on another site, a rebinding DNS name,
a chunked upload without Content-Length and a stalled body send, each answered by one JSON 4xx."""
import socket
import threading
import time

import pytest
import uvicorn

from retrieval.serve import RetrievalService, create_app
from retrieval.serve.guards import allowed_hosts, host_name

from .conftest import free_port, make_settings, png_bytes

OTHER_SITE = "http://127.0.0.1:9"  # another port is another origin


def upload(data: bytes, name: str = "new.png"):
    return [("images", (name, data, "image/png"))]


def test_host_names_and_the_allowed_set():
    assert host_name("127.0.0.1:8000") == "127.0.0.1" and host_name("[::1]:8000") == "::1"
    assert host_name("Evil.Example") == "evil.example" and host_name("::1") == "::1"
    assert allowed_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0", ["gallery.lan"])  # a wildcard names no host
    assert "gallery.lan" in allowed_hosts("0.0.0.0", ["gallery.lan"])


def test_cross_site_writes_are_refused_and_change_nothing(client_for, index_dir):
    client = client_for(index_dir)  # no token: the default loopback mode
    # What fetch(url, {method: 'POST', mode: 'no-cors', body: formData}) sends from a page on another port
    browser = {"Origin": OTHER_SITE, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    added = client.post("/items", files=upload(png_bytes()), headers=browser)
    assert added.status_code == 403 and "cross-site" in added.json()["error"]
    removed = client.delete("/items/1", headers=browser)
    assert removed.status_code == 403 and set(removed.json()) == {"error"}
    for headers in ({"Origin": OTHER_SITE}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"}):
        assert client.post("/items", files=upload(png_bytes()), headers=headers).status_code == 403, headers
    assert client.get("/healthz").json()["count"] == 9 and client.get("/items/1").status_code == 200
    # reads stay open to any page (they change nothing; CORS keeps other origins from reading answers)
    assert client.get("/items/1", headers=browser).status_code == 200


def test_the_pages_own_requests_and_scripts_are_allowed(client_for, index_dir):
    client = client_for(index_dir)
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/items", files=upload(png_bytes((1, 200, 1))), headers=own).status_code == 201
    assert client.post("/items", files=upload(png_bytes((1, 2, 200)))).status_code == 201  # curl: no browser headers
    assert client.post("/search", json={"embedding": [1.0] * 16}, headers=own).status_code == 200
    assert client.delete("/items/9", headers={"Sec-Fetch-Site": "none"}).status_code == 200  # typed by the user


def test_a_cors_origin_may_write(client_for, index_dir):
    client = client_for(index_dir, cors_origins=("http://app.example",))
    headers = {"Origin": "http://app.example", "Sec-Fetch-Site": "cross-site"}
    response = client.post("/items", files=upload(png_bytes()), headers=headers)
    assert response.status_code == 201 and response.headers["access-control-allow-origin"] == "http://app.example"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2", ""])
def test_a_foreign_host_header_is_refused(client_for, index_dir, host):
    client = client_for(index_dir)
    response = client.get("/healthz", headers={"Host": host})
    assert response.status_code == 400 and "--allowed-hosts" in response.json()["error"]
    assert client.post("/items", files=upload(png_bytes()), headers={"Host": host}).status_code == 400
    assert client.get("/healthz").json()["count"] == 9


def test_allowed_hosts_are_served(client_for, index_dir):
    client = client_for(index_dir, allowed_hosts=("testserver", "gallery.lan"))
    for host in ("gallery.lan:8000", "localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_a_chunked_upload_without_content_length_is_cut_at_the_limit(client_for, index_dir):
    client = client_for(index_dir, max_upload_bytes=2000)  # body limit: 16 × (2000 + 4096) + 65536 bytes

    def body():
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n" \
                   b"Content-Type: image/png\r\n\r\n"
        yield boundary
        for _ in range(100):  # 6.5 MB if nobody stops it
            yield b"\0" * 65536

    response = client.post("/items", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert "content-length" not in response.request.headers
    json_body = (b"{\"embedding\": [" + b"0.1, " * 200_000 for _ in range(6))  # 6 MB of JSON, streamed
    response = client.post("/search", content=json_body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and set(response.json()) == {"error"}
    assert client.get("/healthz").json()["count"] == 9


def test_a_declared_length_over_the_limit_is_refused_before_reading(client_for, index_dir):
    client = client_for(index_dir)
    response = client.post("/search", content=b"{}", headers={"content-type": "application/json",
                                                             "content-length": str(50 << 20)})
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.fixture
def live(assets):
    """live(index_dir, **settings) → base port of a uvicorn server in a thread (stopped at the end)."""
    servers = []

    def start(index_dir, **kw):
        settings = make_settings(assets, index_dir, **kw)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, RetrievalService(settings)), host="127.0.0.1",
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        return port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def _raw(port: int, head: bytes, body: bytes, wait_s: float) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head + body)
        start, answer, first = time.perf_counter(), b"", None
        try:
            while chunk := sock.recv(65536):
                first = first or time.perf_counter() - start
                answer += chunk
        except socket.timeout:
            pass
        return answer, first


def test_a_stalled_body_is_answered_408(live, index_dir):
    port = live(index_dir, body_timeout_s=0.5)
    head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    answer, waited = _raw(port, head, b"{\"embedding\": [0.1,", wait_s=10)  # 18 of 1000 bytes, then nothing
    assert answer.startswith(b"HTTP/1.1 408") and b"{\"error\":" in answer and b"0.5 s" in answer
    assert waited < 5 and b"connection: close" in answer.lower()
    chunked = (f"POST /items HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    answer, _ = _raw(port, chunked, b"5\r\n--x\r\n\r\n", wait_s=10)  # one chunk, then the client stalls
    assert answer.startswith(b"HTTP/1.1 408")
    answer, _ = _raw(port, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode(),
                     b"", wait_s=10)
    assert answer.startswith(b"HTTP/1.1 200")  # the server goes on


def test_every_answer_has_nosniff_and_the_csp_and_the_page_needs_no_inline_script(client_for, index_dir):
    client = client_for(index_dir)
    for response in (client.get("/"), client.get("/items/1/image"), client.get("/nope"),
                     client.get("/healthz", headers={"Host": "evil.example"})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src" not in response.headers["content-security-policy"]  # default-src 'self' covers it
        assert "default-src 'self'" in response.headers["content-security-policy"]
    page = client.get("/").text
    assert "<script>" not in page and "<style>" not in page and "style=" not in page
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").status_code == 200
