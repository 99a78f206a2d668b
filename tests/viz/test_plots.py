"""Recall@K curves from metrics.csv: panels, values, several runs, bad input."""
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retrieval.errors import DataError
from retrieval.viz import plots, recall_curve


def metrics_csv(folder, epochs=3, ks=(1, 2, 4, 8), offset=0.0):
    """A run folder's metrics.csv; epoch 2 has no evaluation (NaN), as with train.eval_every=2."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "step": 10 * epoch, "loss": 1.0 / epoch}
        for k in ks:
            row[f"recall@{k}"] = math.nan if epoch == 2 else min(1.0, 0.1 * epoch + 0.05 * k + offset)
        row["map@r"] = math.nan if epoch == 2 else 0.05 * epoch
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    return folder / "metrics.csv"


@pytest.fixture
def captured(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def test_png_written(tmp_path):
    csv = metrics_csv(tmp_path / "run")
    out = recall_curve(csv, tmp_path / "curve.png")
    with Image.open(out) as picture:
        width, height = picture.size
        pixels = np.asarray(picture.convert("RGB"))
    assert (width, height) == (1600, 320)  # 5 panels of 3.2 in at 100 dpi
    assert pixels.std() > 10


def test_one_panel_per_metric_with_the_values(tmp_path, captured):
    csv = metrics_csv(tmp_path / "run", ks=(10, 1, 100))
    recall_curve([csv], tmp_path / "c.png")
    axes = captured[0].axes
    assert [ax.get_title() for ax in axes] == ["Recall@1", "Recall@10", "Recall@100", "MAP@R"]
    x, y = axes[0].get_lines()[0].get_data()
    assert list(x) == [1, 3]  # the epoch without evaluation is skipped
    np.testing.assert_allclose(y, [15.0, 35.0])  # percent
    assert captured[0].legends == []  # one run: no legend


def test_several_runs_and_sources(tmp_path, captured):
    a = metrics_csv(tmp_path / "a")
    b_dir = metrics_csv(tmp_path / "b", ks=(1, 2), offset=0.1).parent  # a run folder works too
    frame = pd.read_csv(a).assign(**{"recall@1": 0.5})
    recall_curve([a, b_dir, frame], tmp_path / "c.png")
    axes = captured[0].axes
    assert len(axes) == 5  # union of recall columns + MAP@R
    labels = [t.get_text() for t in captured[0].legends[0].get_texts()]
    assert labels == ["a", "b", "run 3"]
    assert len(axes[2].get_lines()) == 2  # Recall@4: run b has no such column
    recall_curve([a, b_dir], tmp_path / "d.png", labels=["cbam", "plain"])
    assert [t.get_text() for t in captured[1].legends[0].get_texts()] == ["cbam", "plain"]


def test_bad_input(tmp_path):
    csv = metrics_csv(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="nope"):
        recall_curve(tmp_path / "nope" / "metrics.csv", tmp_path / "c.png")
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        recall_curve([csv], tmp_path / "c.png", labels=["a", "b"])
    (tmp_path / "bad.csv").write_text("step,loss\n1,0.5\n")
    with pytest.raises(DataError, match="no 'epoch' column"):
        recall_curve(tmp_path / "bad.csv", tmp_path / "c.png")
    (tmp_path / "noeval.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(DataError, match="no recall@K or map@r columns"):
        recall_curve(tmp_path / "noeval.csv", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_score_figure_reports_separation_and_draws(tmp_path):
    from retrieval.viz.scores import score_figure

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 10)
    centres = np.linalg.qr(rng.normal(size=(16, 16)))[0][:8]  # orthogonal class directions
    x = centres[y] + 0.05 * rng.normal(size=(80, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    separated = score_figure(x, y, tmp_path / "s.png", title="separated")
    assert separated["same_pairs"] == 8 * 45 and separated["overlap"] < 0.05
    assert separated["same_mean"] > 0.9 and abs(separated["diff_mean"]) < 0.1
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    mixed = score_figure(x, rng.permutation(y), tmp_path / "m.png")  # labels unrelated to the vectors
    assert mixed["overlap"] > 0.6
