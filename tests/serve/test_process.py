"""The real server process: its command line refusals, and kill -9 right after and during an add."""
import socket
import subprocess
import sys
import threading
import time

import httpx

from retrieval.cli import serve
from retrieval.index import load_index

from .conftest import Server, png_bytes


def test_refuses_a_public_address_without_a_token_and_short_tokens(assets, index_dir, tmp_path, capsys):
    common = ["--checkpoint", str(assets["ckpt"]), "--index", str(index_dir)]
    assert serve.main([*common, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--token-file" in err
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert serve.main([*common, "--token-file", str(short)]) == 2
    err = capsys.readouterr().err
    assert "at least 16" in err and len(err.strip().splitlines()) == 1  # one line, no traceback
    assert serve.main(["--checkpoint", str(assets["ckpt"]), "--index", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_argument_refusals_come_before_the_model_is_loaded(tmp_path, capsys):
    missing = ["--checkpoint", str(tmp_path / "no.pt"), "--index", str(tmp_path / "no-index")]
    assert serve.main([*missing, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "no.pt" not in err  # refused on the arguments, nothing opened


def test_a_port_in_use_is_one_error_line_before_anything_is_served(assets, index_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "retrieval.serve", "--checkpoint", str(assets["ckpt"]),
                              "--index", str(index_dir), "--port", str(port), "--precision", "fp32"],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "serving" not in run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"--port {port}" in lines[0], run.stderr


def test_kill_minus_9_after_and_during_an_add(assets, index_dir):
    """After: an add whose response returned is on disk. During: the folder is the old one or the new one."""
    server = Server(assets, index_dir)
    response = server.add(png_bytes((9, 200, 9)))
    assert response.status_code == 201
    (new_id,) = response.json()["ids"]
    server.kill()  # no shutdown hook runs

    server = Server(assets, index_dir)
    before = server.count()
    assert before == 10
    hit = httpx.get(f"{server.url}/items/{new_id}/neighbours", params={"k": 1}, timeout=30).json()
    assert hit["queries"][0]["results"][0]["id"] == new_id
    thread = threading.Thread(target=_ignore_errors, args=(server.add, png_bytes((1, 2, 250), (64, 64))))
    thread.start()
    time.sleep(0.05)
    server.kill()
    thread.join()
    index, metadata, _ = load_index(index_dir)  # the folder on disk is whole
    assert index.ntotal == len(metadata) and index.ntotal in (before, before + 1)

    server = Server(assets, index_dir)  # it serves again; the killed writer's temporaries are gone
    assert server.count() == index.ntotal
    assert server.add(png_bytes((3, 4, 5))).status_code == 201 and server.count() == index.ntotal + 1
    out = server.stop()
    assert f"at {server.url}/" in out and "POST /items 201" in out  # start-up URL, one access line per request
    leftovers = [p.name for p in index_dir.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    assert not leftovers


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except httpx.HTTPError:
        pass  # the server was killed under the request: that is the point
