"""Config loading, overrides, validation errors, and the --print-config / error exit of the CLI."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retrieval.config import Config, ConfigError, load_config, save_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_cgd():
    cfg = load_config(None)
    assert (cfg.model.embedding_dim, cfg.model.temperature, cfg.loss.label_smoothing) == (1536, 0.5, 0.1)
    assert (cfg.data.batch_size, cfg.data.m_per_class, cfg.data.resize, cfg.data.image_size) == (128, 4, 252, 224)


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  descriptors: mg\noptim:\n  lr: 1e-4\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.cbam=false", "eval.recall_k=1,10", "data.root=/x/y",
                             "train.epochs=3", "model.gem_p=4"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.attention == "none" and cfg.model.descriptors == "MG"
    assert cfg.eval.recall_k == [1, 10] and cfg.data.root == "/x/y" and cfg.train.epochs == 3
    assert cfg.model.gem_p == 4.0 and isinstance(cfg.model.gem_p, float)


def test_base_inheritance(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  descriptors: MG\n  embedding_dim: 512\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel:\n  descriptors: SG\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.model.descriptors, cfg.model.embedding_dim) == ("SG", 512)


@pytest.mark.parametrize("override, words", [
    (["optim.lrr=1"], ["optim.lrr", "optim.lr"]),
    (["optimm.lr=1"], ["optimm", "optim"]),
    (["train.epochs=abc"], ["train.epochs", "int", "abc"]),
    (["model.cbam=maybe"], ["model.cbam", "bool"]),
    (["model.descriptors=SX"], ["model.descriptors", "SX"]),
    (["model.descriptors=SMG", "model.embedding_dim=1000"], ["model.embedding_dim", "1000", "3"]),
    (["loss.name=contrastive"], ["loss.name", "contrastive", "proxy_anchor"]),
    (["data.batch_size=30", "data.m_per_class=4"], ["data.batch_size", "30", "4"]),
    (["optim.lr=0"], ["optim.lr", "> 0"]),
    (["loss.label_smoothing=1.5"], ["loss.label_smoothing"]),
    (["noequals"], ["section.key=value"]),
    (["data.train_crop=centre"], ["data.train_crop", "centre", "resized"]),
    (["data.crop_scale=[0.5]"], ["data.crop_scale", "[0.5]", "0 < low <= high <= 1"]),
    (["data.crop_scale=[0.8, 0.2]"], ["data.crop_scale", "[0.8, 0.2]"]),
    (["data.crop_scale=[0, 1]"], ["data.crop_scale", "[0.0, 1.0]"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    for word in words:
        assert word in str(err.value)


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  backbon: resnet18\n")
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(wrong)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.descriptors=SMG", "model.embedding_dim=96", "data.train_classes=1,50"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # no temporary file left behind


# One interpreter runs the three top-level scripts as __main__ (torch is imported once, not three times).
RUN_SCRIPTS = """
import runpy, sys
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        print(f"{script} exited {done.code}")
"""


def test_scripts_answer_help():
    scripts = ["train_embed.py", "build_index.py", "query.py"]
    out = subprocess.run([sys.executable, "-c", RUN_SCRIPTS, *scripts], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for script in scripts:
        assert f"usage: {script}" in out.stdout and f"{script} exited 0" in out.stdout


def test_print_config_and_error_exit(tmp_path, monkeypatch, capsys):
    from retrieval.cli.train import main

    monkeypatch.chdir(tmp_path)
    run = ["--config", str(ROOT / "configs/cub200.yaml")]
    assert main(run + ["--print-config", "optim.lr=3e-4"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == pytest.approx(3e-4)
    assert main(run + ["optim.lrr=3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_every_shipped_config_resolves():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        assert isinstance(load_config(path), Config)


def test_inference_checks_what_inference_reads():
    from retrieval.config import config_from_dict

    raw = to_dict(load_config(None))
    raw["loss"].update(name="renamed_loss", args={"renamed": 1}, label_smoothing=2.0)
    raw["optim"].update(name="renamed_optimizer", lr=-1.0)
    cfg = config_from_dict(raw, stored=True, inference=True)
    assert (cfg.loss.name, cfg.optim.name) == ("renamed_loss", "renamed_optimizer")
    with pytest.raises(ConfigError, match="loss.name: 'renamed_loss' is not one of"):
        config_from_dict(raw, stored=True)
    raw["model"]["descriptors"] = "SX"  # what inference reads is still checked
    with pytest.raises(ConfigError, match="model.descriptors"):
        config_from_dict(raw, stored=True, inference=True)
