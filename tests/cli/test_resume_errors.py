"""--resume never undoes a hand edit of config.yaml silently; a run with no committed epoch is not offered --resume."""
import hashlib

from retrieval.checkpoint import read_checkpoint
from retrieval.cli import train as train_cli
from retrieval.config import save_config
from retrieval.engine import train
from tests.cli.test_errors import _one_error_line
from tests.engine.conftest import TINY, data_root, tiny_config  # noqa: F401 - data_root is a fixture


def _md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_edited_config_yaml_is_named_and_refused_not_overwritten(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=1"))
    path = out / "config.yaml"
    text = path.read_text()
    assert "epochs: 1\n" in text and "embedding_dim: 32\n" in text and "lr: 0.001\n" in text
    path.write_text(text.replace("epochs: 1\n", "epochs: 2\n").replace("embedding_dim: 32\n", "embedding_dim: 64\n")
                    .replace("lr: 0.001\n", "lr: 0.01\n"))
    before = _md5s(out)
    code = train_cli.main(["--resume", str(out), "-q"])
    _one_error_line(capsys.readouterr().err, "config.yaml was edited", "train.epochs: last.pt has 1, config.yaml 2",
                    "optim.lr: last.pt has 0.001, config.yaml 0.01",
                    "model.embedding_dim: last.pt has 32, config.yaml 64",
                    "pass the changes as overrides", "train.epochs=2")
    assert code == 2 and _md5s(out) == before  # the edit is still there, nothing trained
    path.write_text(text.replace("epochs: 1\n", "epochs: 2\n"))
    code = train_cli.main(["--resume", str(out), "train.epochs=2", "-q"])  # the edit, passed as the message says
    assert code == 0 and "done: epoch 2/2" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["epoch"] == 2


def test_a_run_stopped_before_its_first_epoch_is_not_offered_resume(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=1")
    out.mkdir()
    save_config(cfg, out / "config.yaml")  # what a run killed during its first epoch leaves
    (out / "train.log").write_text("")
    argv = ["--config", str(out / "config.yaml"), *TINY, f"data.root={data_root}", f"train.out_dir={out}", "-q"]
    code = train_cli.main(argv)
    err = capsys.readouterr().err
    _one_error_line(err, str(out), "no last.pt", "--overwrite")
    assert code == 2 and "--resume" not in err
    code = train_cli.main(["--resume", str(out), "-q"])
    _one_error_line(capsys.readouterr().err, "no last.pt", "nothing to resume", "--overwrite")
    assert code == 2 and sorted(p.name for p in out.iterdir()) == ["config.yaml", "train.log"]
    assert train_cli.main([*argv, "--overwrite"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_checkpoint_whose_loss_was_renamed_still_embeds_and_searches_but_does_not_resume(data_root, tmp_path,
                                                                                          capsys):
    """Inference checks model, data transform and eval sections; loss and optimiser only when a run resumes."""
    import torch

    from retrieval.checkpoint import load_model
    from retrieval.cli import build_index, query
    from tests.conftest import make_gallery

    out = tmp_path / "run"
    train(tiny_config(data_root, out, "train.epochs=1", "train.steps_per_epoch=1"))
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"]["loss"]["name"] = "renamed_loss"  # a loss a later version no longer registers
    state["config"]["loss"]["args"] = {"renamed_arg": 1.0}
    torch.save(state, out / "last.pt")
    model, cfg, _ = load_model(out / "last.pt")
    assert cfg.loss.name == "renamed_loss" and model.embedding_dim == 32

    gallery = make_gallery(tmp_path / "gallery")
    fast = ["--workers", "0", "--precision", "fp32", "-q"]
    assert build_index.main(["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "idx"),
                             "--images", str(gallery), "--folder-labels", *fast]) == 0
    query_image = sorted(gallery.rglob("*.png"))[0]
    assert query.main(["--checkpoint", str(out / "last.pt"), "--index", str(tmp_path / "idx"), "-k", "3",
                       "--format", "json", str(query_image), *fast]) == 0
    found = capsys.readouterr().out
    assert str(query_image) in found and '"rank": 1' in found

    code = train_cli.main(["--resume", str(out), "train.epochs=2", "-q"])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "loss.name", "renamed_loss")
