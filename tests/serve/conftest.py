"""A tiny index folder built with the tiny checkpoint, a FastAPI test client serving it, and the real server process."""
import io
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.cli import build_index
from retrieval.serve import RetrievalService, Settings, create_app

FAST = ["--workers", "0", "--precision", "fp32", "-q"]


@pytest.fixture(scope="session")
def built_index(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_index") / "idx"
    assert build_index.main(["--checkpoint", str(assets["ckpt"]), "--out", str(out), "--csv", str(assets["csv"]),
                             *FAST]) == 0
    return out


@pytest.fixture
def index_dir(built_index, tmp_path):
    """A private copy: write tests change it."""
    copy = tmp_path / "idx"
    shutil.copytree(built_index, copy)
    return copy


def make_settings(assets, index_dir, **kw) -> Settings:
    kw.setdefault("allowed_hosts", ("testserver",))  # the Host header of Starlette's TestClient
    return Settings(checkpoint=assets["ckpt"], index=index_dir, precision="fp32", **kw)


@pytest.fixture
def client_for(assets):
    """client_for(index_dir, **settings) → a started TestClient (closed at the end of the test)."""
    clients = []

    def make(index_dir, **kw):
        settings = make_settings(assets, index_dir, **kw)
        client = TestClient(create_app(settings, RetrievalService(settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def png_bytes(colour=(200, 30, 30), size=(40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m retrieval.serve`` on a free loopback port, waited for until /healthz answers."""

    def __init__(self, assets, index_dir, *extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retrieval.serve", "--checkpoint", str(assets["ckpt"]), "--index", str(index_dir),
             "--port", str(self.port), "--precision", "fp32", "--threads", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError("server did not answer /healthz within 120 s")

    def count(self) -> int:
        return httpx.get(f"{self.url}/healthz", timeout=10).json()["count"]

    def add(self, data: bytes):
        return httpx.post(f"{self.url}/items", files=[("images", ("new.png", data, "image/png"))], timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out
