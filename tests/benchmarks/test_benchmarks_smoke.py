"""Every speed benchmark runs at a tiny size and writes its JSON (and Markdown) with the expected keys.

The numbers mean nothing at these sizes; the tests check that the benchmarks run, that their
results have the shape RESULTS.md and run_all rely on, and the few things that must hold
whatever the machine (exact search recalls itself, both embedding paths agree).
"""
import json

import numpy as np
import pytest

from benchmarks import bench_e2e, bench_embed_speed, bench_index, bench_metrics, bench_serve, bench_train_speed, run_all
from tests.conftest import make_gallery

HEADER = {"date", "machine", "commit", "versions"}


def _read(out, name):
    data = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.md").read_text().startswith(("Training", "Embedding", "Top-", "One image", "# Speed",
                                                         "# retrieval-serve"))
    return data


def test_train_speed(tmp_path):
    bench_train_speed.main(["--backbone", "resnet18", "--size", "32", "--batch", "8", "--dim", "32", "--steps", "1",
                            "--rounds", "1", "--warmup", "1", "--out", str(tmp_path)])
    res = _read(tmp_path, "train_speed")
    assert HEADER <= res.keys() and len(res["images_per_s"]) == 2 and res["speedup"] > 0


def test_train_speed_with_compile(tmp_path, monkeypatch):
    monkeypatch.setattr("retrieval.execution.COMPILE_BACKEND", "eager")  # dynamo only: seconds, not a minute
    bench_train_speed.main(["--backbone", "resnet18", "--size", "32", "--batch", "8", "--dim", "32", "--steps", "1",
                            "--rounds", "1", "--warmup", "1", "--compile", "--out", str(tmp_path)])
    res = _read(tmp_path, "train_speed")
    compiled = [name for name in res["images_per_s"] if name.endswith("+ train.compile")]
    assert len(res["images_per_s"]) == 3 and len(compiled) == 1
    assert res["first_step_s"].keys() == res["images_per_s"].keys() == res["speedup_by_loop"].keys()
    assert res["speedup_by_loop"]["plain fp32"] == 1.0
    assert "| 1.00 |" in (tmp_path / "train_speed.md").read_text()


def test_embed_speed(tmp_path):
    bench_embed_speed.main(["--backbone", "resnet18", "--size", "32", "--batch", "4", "--dim", "32", "--steps", "2",
                            "--rounds", "1", "--warmup", "1", "--plain-torchvision", "--out", str(tmp_path)])
    res = _read(tmp_path, "embed_speed")
    assert HEADER <= res.keys() and {"models", "speedup", "target_speedup", "autocast"} <= res.keys()
    assert len(res["models"]) == 2  # the project's network and torchvision's
    for model in res["models"].values():
        assert len(model["images_per_s"]) == 2 and all(v > 0 for v in model["images_per_s"].values())
        assert model["min_cosine"] > 0.95  # bf16 + channels_last embeds what fp32 embeds


def test_metrics(tmp_path):
    bench_metrics.main(["--n", "1000", "--classes", "200", "--ks", "1,10", "--no-pml",
                        "--out", str(tmp_path / "metrics.json")])
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert {"ratio_to_bare_search", "rows", "versions"} <= res.keys()


def test_index(tmp_path):
    bench_index.main(["--n", "3000", "--queries", "40", "--clusters", "60", "--superclusters", "6",
                      "--ivf", "IVF8,Flat", "--nprobe", "1,8", "--ef-search", "16,64", "--single", "3",
                      "--batch-budget", "0", "--out", str(tmp_path)])
    res = _read(tmp_path, "index")
    assert HEADER <= res.keys() and {"rows", "k", "exact_top1_score"} <= res.keys()
    rows = res["rows"]
    assert [r["factory"] for r in rows] == ["Flat", "IVF8,Flat", "IVF8,Flat", "HNSW32", "HNSW32"]
    for r in rows:
        assert {"build_s", "size_mb", "batch_ms_per_query", "single_query_ms", "recall_at_10"} <= r.keys()
        assert 0 <= r["recall_at_10"] <= 1
    assert rows[0]["recall_at_10"] == 1.0
    assert rows[2]["nprobe"] == 8 and rows[2]["recall_at_10"] == pytest.approx(1.0)  # every list visited = exact
    assert rows[0]["size_mb"] == pytest.approx(3000 * 512 * 4 / 2**20, rel=0.01)  # Flat: the raw vectors


def test_clustered_gallery_is_unit_and_clustered():
    x, q = bench_index.clustered_gallery(2000, 10, 64, clusters=20, superclusters=4, centre_spread=1.0, spread=1.0,
                                          rank=8, noise=0.3)
    assert x.shape == (2000, 64) and q.shape == (10, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    sims = q @ x.T  # a query's nearest gallery vectors sit far above the typical similarity
    assert (np.sort(sims, axis=1)[:, -10:].mean() - np.median(sims)) > 0.3


def test_recall_at_k_reference():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, -1, -1]])
    assert bench_index.recall_at_k(exact, found) == pytest.approx(2 / 6)


def test_e2e(tmp_path):
    bench_e2e.main(["--backbone", "resnet18", "--size", "32", "--dim", "32", "--gallery", "500",
                    "--image-size", "64x48", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)])
    res = _read(tmp_path, "e2e")
    assert HEADER <= res.keys() and res["overhead_ratio"] > 0
    assert {"end to end", "forward alone", "decode (load_image)", "transform", "search top-10"} == res["median_ms"].keys()


def test_run_all_quick_subset(tmp_path):
    assert run_all.main(["--quick", "--only", "index", "--out", str(tmp_path)]) == 0
    summary = _read(tmp_path, "summary")
    assert [r["name"] for r in summary["runs"]] == ["index"] and summary["runs"][0]["returncode"] == 0
    assert "## index" in (tmp_path / "summary.md").read_text()


def test_run_all_rejects_unknown_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope", "--out", str(tmp_path)])
    assert "unknown benchmark" in capsys.readouterr().err


def test_serve_rejects_a_server_env_without_a_value(capsys):
    with pytest.raises(SystemExit):
        bench_serve.main(["--server-env", "OMP_WAIT_POLICY"])
    assert "--server-env 'OMP_WAIT_POLICY': expected KEY=VALUE" in capsys.readouterr().err


def test_serve(tmp_path):
    images = make_gallery(tmp_path / "images", classes=3, per_class=5)
    assert bench_serve.main(["--backbone", "resnet18", "--size", "32", "--dim", "16", "--images", str(images),
                             "--gallery", "12", "--requests", "4", "--adds", "4", "--rerank", "aqe:n=2",
                             "--server-env", "OMP_WAIT_POLICY=PASSIVE", "--out", str(tmp_path / "out")]) == 0
    res = _read(tmp_path / "out", "serve")
    assert res["server_env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    lat = res["latency"]
    assert lat["httpx_p50_ms"] > 0 and lat["ratio_server_forward_p50"] == pytest.approx(
        lat["http_p50_ms"] / lat["stages_p50_ms"]["forward"])
    assert res["rerank_latency"]["rerank"] == "aqe:n=2" and res["rerank_latency"]["reranked_p50_ms"] > 0
    assert HEADER <= res.keys() and res["gallery"] == 12 and res["throughput_errors"] == 0
    assert {"http_p50_ms", "http_p99_ms", "forward_p50_ms", "ratio_p50", "ratio_p99"} <= res["latency"].keys()
    stages = res["latency"]["stages_p50_ms"]
    assert {"parse", "decode", "transform", "forward", "batcher", "search", "json", "outside the handler"} == stages.keys()
    writes = res["writes"]
    assert writes["consistent"] and writes["final"] == 12 + 4 - 2 and writes["write_errors"] == 0
    assert writes["search_errors"] == 0 and res["server_memory_mb"]["VmHWM"] > 0
    assert res["forward_batches"] <= res["images_embedded"]
    assert not (tmp_path / "out" / "work").exists()  # its scratch folder is removed


def test_attention_comparison_runs_each_choice_and_scores_localisation(tmp_path):
    from benchmarks import bench_attention

    tiny = ["data.synthetic_classes=8", "data.synthetic_per_class=8", "data.synthetic_size=40", "data.image_size=32",
            "data.resize=36", "data.val_classes=0", "data.batch_size=16", "data.num_workers=0",
            "train.steps_per_epoch=2", "train.eval_every=1", "model.embedding_dim=16"]
    assert bench_attention.main(["--attention", "none,bam", "--seeds", "0", "--epochs", "1",
                                 "--out", str(tmp_path / "out"), *tiny]) == 0
    runs = json.loads((tmp_path / "out" / "attention.json").read_text())["runs"]
    assert [r["attention"] for r in runs] == ["none", "bam"]
    for run in runs:
        assert 0 <= run["gradcam_pointing"] <= 1 and 0 <= run["centre_energy"] <= 1 and run["epoch_s"] > 0
    assert "gate_pointing" not in runs[0] and 0 <= runs[1]["gate_pointing"] <= 1  # BAM has gates, none has not
    assert "| bam | 1 |" in (tmp_path / "out" / "attention.md").read_text()


def test_query_wall_time_compares_the_runtimes_on_the_same_answer(tmp_path, assets):
    pytest.importorskip("onnxruntime")
    from benchmarks import bench_query
    from retrieval.cli.build_index import main as build

    index = tmp_path / "idx"
    assert build(["--checkpoint", str(assets["ckpt"]), "--out", str(index), "--images", str(assets["gallery"]),
                  "--workers", "0", "--quiet"]) == 0
    out = tmp_path / "out"
    assert bench_query.main(["--checkpoint", str(assets["ckpt"]), "--index", str(index), "-k", "3", "--rounds", "1",
                             "--out", str(out)]) == 0
    res = json.loads((out / "query.json").read_text())
    assert HEADER <= res.keys() and len(res["torch_s"]) == len(res["onnxruntime_cached_s"]) == 1
    assert res["first_onnxruntime_s"] > 0 and res["torch_over_cached"][0] > 0
    assert res["image"].endswith(".png") and res["first_differing_rank"] in (None, 0, 1, 2)
    assert "| `--runtime onnxruntime`, cached |" in (out / "query.md").read_text()
