"""The cached ONNX model: the PyTorch path stores its export once; query.py then embeds without torch."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retrieval.embed import open_embedder
from retrieval.onnx_cache import cache_dir, entry_for, open_cached_embedder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    """Images the transform must treat like torchvision: odd sizes, not square, grey, RGBA, a JPEG."""
    root = tmp_path_factory.mktemp("odd_queries")
    rng = np.random.default_rng(3)
    shapes = [((37, 53, 3), "RGB", "a.png"), ((64, 41, 3), "RGB", "b.jpg"), ((29, 29), "L", "c.png"),
              ((45, 30, 4), "RGBA", "d.png")]
    paths = []
    for shape, mode, name in shapes:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name)
        paths.append(str(root / name))
    return pd.DataFrame({"path": paths, "label": [""] * len(paths)})


def test_the_cached_model_embeds_like_pytorch(assets, queries):
    torch_embedder = open_embedder(assets["ckpt"], "cpu", workers=0, precision="fp32")
    reference = torch_embedder.embed_table(queries, progress=False)
    assert open_cached_embedder(assets["other"]) is None  # nothing exported for that checkpoint yet
    onnx_embedder = open_embedder(assets["ckpt"], "cpu", workers=0, runtime="onnxruntime")
    onnx_embedder.embed_table(queries, progress=False)  # the first batch exports and stores the model
    cached = open_cached_embedder(assets["ckpt"])
    assert cached is not None and cached.sha256 == torch_embedder.sha256 and cached.dim == torch_embedder.dim
    assert cached.eval_settings.recall_k == [1, 2]
    got = cached.embed_table(queries, progress=False)
    cosine = (got * reference).sum(axis=1)
    assert got.shape == reference.shape and cosine.min() >= 0.9999, cosine
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert open_cached_embedder(assets["other"]) is None  # keyed by the checkpoint's own sha256


def test_a_damaged_cache_entry_is_a_miss_and_is_exported_again(assets, queries, caplog):
    embedder = open_embedder(assets["narrow"], "cpu", workers=0, runtime="onnxruntime")
    # an entry whose description is right and whose model file is damaged (one export in this test, not two)
    entry_for(embedder.sha256, embedder.cfg.data.image_size).store(b"not an onnx model", embedder._run.cache_as[1])
    (model_file,) = cache_dir().glob(f"{embedder.sha256}-*px.onnx")
    assert open_cached_embedder(assets["narrow"]) is None  # a warning, not an error
    assert "could not be opened" in caplog.text
    again = open_embedder(assets["narrow"], "cpu", workers=0, runtime="onnxruntime")
    again.embed_table(queries.iloc[:1], progress=False)  # exports again and replaces the entry
    assert open_cached_embedder(assets["narrow"]) is not None
    description = json.loads(model_file.with_suffix(".json").read_text())
    assert description["sha256"] == embedder.sha256 and description["embedding_dim"] == 8


def _query(assets, index_dir, *flags):
    """query.py's JSON answer for the first gallery image, run in a fresh interpreter, and whether it imported torch."""
    argv = ["--checkpoint", str(assets["ckpt"]), "--index", str(index_dir), "-k", "3", "--format", "json",
            "--workers", "0", "--quiet", *flags, str(assets["paths"][0])]
    code = ("import sys, json; from retrieval.cli.query import main; rc = main(" + repr(argv) + "); "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=240,
                          env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["rc"] == 0, proc.stderr
    return json.loads(proc.stdout), status["torch"]


def test_query_with_a_cached_model_answers_without_importing_torch(assets, tmp_path):
    from retrieval.cli.build_index import main as build
    from retrieval.gallery import open_gallery

    index_dir = tmp_path / "idx"
    assert build(["--checkpoint", str(assets["ckpt"]), "--out", str(index_dir), "--images", str(assets["gallery"]),
                  "--folder-labels", "--workers", "0", "--quiet", "--runtime", "onnxruntime-int8"]) == 0
    # the int8 gallery build exported the fp32 model (and cached it) before quantising it
    answer, imported = _query(assets, index_dir, "--runtime", "onnxruntime")
    assert not imported  # Pillow, numpy, FAISS and ONNX Runtime only
    torch_embedder = open_embedder(assets["ckpt"], "cpu", workers=0, precision="fp32")
    query = torch_embedder.embed_table(pd.DataFrame({"path": [str(assets["paths"][0])]}), progress=False)
    scores, ids = open_gallery(index_dir).search(query, 3)
    hits = answer[0]["results"]
    assert [h["gallery_id"] for h in hits] == ids[0].tolist()
    assert np.allclose([h["score"] for h in hits], scores[0], atol=1e-4)
    # onnxruntime-int8 quantises the cached export on the gallery's images (retrieval-serve does the same)
    answer, _ = _query(assets, index_dir, "--runtime", "onnxruntime-int8")
    assert answer[0]["results"][0]["gallery_id"] == ids[0][0]
    assert abs(answer[0]["results"][0]["score"] - scores[0][0]) < 0.02
