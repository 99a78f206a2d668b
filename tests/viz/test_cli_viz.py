"""retrieval-viz command (retrieval/cli/viz.py): both pictures from files, clear errors."""
import pytest
from PIL import Image

from retrieval.checkpoint import save_checkpoint
from retrieval.cli.viz import main
from retrieval.config import to_dict
from test_attention import images, tiny_config, tiny_model  # noqa: F401  (images is a fixture)
from test_plots import metrics_csv


def test_attention_and_curve(images, tmp_path, capsys):  # noqa: F811
    cfg = tiny_config()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": tiny_model(cfg).state_dict(), "config": to_dict(cfg), "num_classes": 0})
    out = tmp_path / "a.png"
    assert main(["attention", "--checkpoint", str(ckpt), *map(str, images), "--out", str(out), "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size[0] > picture.size[1]
    runs = [str(metrics_csv(tmp_path / "r1")), str(tmp_path / "r1")]
    assert main(["curve", *runs, "--labels", "x", "y", "--out", str(tmp_path / "c.png"), "-q"]) == 0
    assert (tmp_path / "c.png").is_file()


def test_errors(tmp_path, capsys):
    cfg = tiny_config(attention="none")
    ckpt = tmp_path / "plain.pt"
    save_checkpoint(ckpt, {"model": tiny_model(cfg).state_dict(), "config": to_dict(cfg), "num_classes": 0})
    code = main(["attention", "--checkpoint", str(ckpt), "x.png", "--out", str(tmp_path / "a.png"), "-q"])
    assert code == 2 and "x.png" in capsys.readouterr().err  # a plain model draws Grad-CAM; the image is missing
    assert main(["curve", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "c.png")]) == 2
    assert "metrics file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["curve", "a.csv", "--labels", "x", "y", "--out", "c.png"])
    assert not list(tmp_path.glob("*.png"))
