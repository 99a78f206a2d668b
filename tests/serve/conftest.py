"""A tiny index folder built with the tiny checkpoint, and a FastAPI test client serving it."""
import io
import shutil

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
