"""`make demo`'s command end to end on a tiny budget: every step runs and writes what it promises."""
import json


from retrieval.cli import demo

TINY = ["data.synthetic_classes=12", "data.synthetic_per_class=8", "data.synthetic_size=40", "data.image_size=32",
        "data.resize=36", "data.batch_size=16", "data.num_workers=0", "model.embedding_dim=32", "train.epochs=1",
        "train.steps_per_epoch=2", "train.precision=fp32", "eval.batch_size=32", "data.val_classes=2"]


def test_demo_runs_every_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "-q", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "untrained" in printed and "recall@1" in printed and "replacing" not in printed
    result = json.loads((out / "demo.json").read_text())
    assert set(result["trained"]) >= {"recall@1", "recall@8", "map@r"}
    assert set(result["untrained"]) == set(result["trained"])
    space = result["embedding_space"]
    assert 0 <= space["mean_norm"] <= 1 and 0 <= space["exact_recall@1"] <= 1 and "norm of the mean" in printed
    loc = result["localisation"]  # trained and untrained network on the object masks, + the centre prior
    assert set(loc) == {"untrained", "trained"} and "trained: pointing game" in printed and "centre prior" in printed
    assert all(0 <= s["pointing_game"] <= 1 for run in loc.values() for s in run.values())
    for name in ("train/best.pt", "train/last.pt", "train/metrics.csv", "index/index.faiss", "index/manifest.json", "grid.png",
                 "results.md", "scores.png", "explain.png"):
        assert (out / name).is_file(), name
    assert demo.main(["--out", str(out), "-q", *TINY]) == 0  # a finished demo folder may be replaced
    assert "replacing" in capsys.readouterr().out


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert demo.main(["--out", str(tmp_path), *TINY]) == 2
    assert "not a finished demo folder" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_demo_bad_override_touches_nothing(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "d"), "model.descriptors=XY"]) == 2
    assert not (tmp_path / "d").exists()
