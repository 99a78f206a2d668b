"""Pair-explanation picture (retrieval/viz/explain.py) and `retrieval-viz explain`: a PNG, its titles, errors."""
import numpy as np
from PIL import Image

from retrieval.checkpoint import save_checkpoint
from retrieval.cli.viz import main
from retrieval.config import to_dict
from retrieval.viz import explain as explain_viz
from retrieval.viz.explain import explain_figure
from test_attention import images, tiny_config, tiny_model  # noqa: F401  (images is a fixture)


def test_figure_titles_and_scale(images, tmp_path, monkeypatch):  # noqa: F811
    figures = []
    monkeypatch.setattr(explain_viz, "save_figure", lambda fig, path: figures.append(fig) or path)
    cfg = tiny_config(descriptors="SG")
    got = explain_figure(tiny_model(cfg), images[0], images[1], cfg, tmp_path / "e.png", display=64)
    fig = figures[0]
    title = fig._suptitle.get_text()
    assert f"cosine {got.score:.3f} = S {got.shares['S']:.3f}" in title and "S exact, G first-order" in title
    pictures, bar = fig.axes[:2], fig.axes[2]
    assert "contribution to the cosine" in bar.get_ylabel()
    assert pictures[0].get_title().startswith("img0.png") and "4×4" in pictures[0].get_title()
    low, high = pictures[0].get_images()[1].get_clim()
    assert low == -high and high > 0  # one symmetric scale: red adds, blue takes away


def test_command_writes_the_picture(images, tmp_path, capsys):  # noqa: F811
    cfg = tiny_config(descriptors="SMG", embedding_dim=48, embedding_bn=True)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": tiny_model(cfg).state_dict(), "config": to_dict(cfg), "num_classes": 0})
    out = tmp_path / "explain.png"
    assert main(["explain", "--checkpoint", str(ckpt), str(images[0]), str(images[1]), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "cosine" in printed and "S exact, M/G first-order" in printed and f"wrote {out}" in printed
    with Image.open(out) as picture:
        assert picture.size[0] > picture.size[1]
        assert np.asarray(picture.convert("RGB")).std() > 20
    code = main(["explain", "--checkpoint", str(ckpt), str(tmp_path / "ghost.png"), str(images[1]),
                 "--out", str(tmp_path / "x.png"), "-q"])
    assert code == 2 and "ghost.png" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
