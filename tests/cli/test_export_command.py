"""retrieval-export on a tiny checkpoint: the written file embeds as the eager model does, and refusals are one line."""
import pytest
import torch

from retrieval.checkpoint import load_model
from retrieval.cli.export import main
from retrieval.models.export import onnx_embed, torchscript_embed


def run(capsys, *argv):
    code = main([str(a) for a in argv] + ["-q"])
    out, err = capsys.readouterr()
    return code, out, err


def _eager(ckpt, images):
    model, _, _ = load_model(ckpt, "cpu")
    with torch.no_grad():
        return model.eval()(images).numpy()


def test_torchscript_export_matches_the_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "embed.pt"
    code, stdout, err = run(capsys, "--checkpoint", assets["ckpt"], "--format", "torchscript", "--out", out)
    assert code == 0, err
    assert "16-d embeddings" in stdout and "parity with the eager model" in stdout
    images = torch.randn(4, 3, 32, 32)
    assert abs(torchscript_embed(out, images) - _eager(assets["ckpt"], images)).max() < 1e-5


def test_onnx_export_matches_the_checkpoint(assets, tmp_path, capsys):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    out = tmp_path / "embed.onnx"
    code, stdout, err = run(capsys, "--checkpoint", assets["ckpt"], "--format", "onnx", "--out", out)
    assert code == 0, err
    images = torch.randn(5, 3, 32, 32)
    assert abs(onnx_embed(out, images) - _eager(assets["ckpt"], images)).max() < 1e-4


def test_a_failed_parity_check_removes_the_file(assets, tmp_path, capsys, monkeypatch):
    from retrieval.models import export

    monkeypatch.setattr(export, "parity", lambda *args, **kwargs: 0.5)
    out = tmp_path / "embed.pt"
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--format", "torchscript", "--out", out)
    assert code == 1 and "differ from the eager model's by up to 5.00e-01" in err and not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/m.pt", "--tolerance", "0"], "--tolerance: expected > 0"),
])
def test_refusals_name_the_flag(assets, tmp_path, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run(capsys, "--checkpoint", assets["ckpt"], "--format", "torchscript", *argv)
    assert code == 2 and words in err and err.count("\n") == 1


def test_an_unknown_format_is_a_usage_error(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "--checkpoint", assets["ckpt"], "--format", "svg", "--out", tmp_path / "m")
    assert exit_.value.code == 2 and "invalid choice: 'svg'" in capsys.readouterr().err
