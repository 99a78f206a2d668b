"""Every console script of setup.cfg: --help exits 0 with its usage and every flag; -v adds the traceback to an error."""
import argparse
import configparser
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _console_scripts() -> dict[str, str]:
    """name → module of each ``name = module:main`` entry in setup.cfg [options.entry_points]."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    entries = dict(line.split(" = ") for line in lines)
    assert all(target.endswith(":main") for target in entries.values()), entries
    return {name: target.split(":")[0] for name, target in entries.items()}


SCRIPTS = _console_scripts()
# A user error each command reports before any real work (nothing here exists); {tmp} is the test's folder.
FAILING = {
    "retrieval-train": (["--config", "{tmp}/absent.yaml"], "config file not found"),
    "retrieval-build-index": (["--checkpoint", "{tmp}/absent.pt", "--out", "{tmp}/idx", "--images", "{tmp}"],
                              "no images under"),
    "retrieval-query": (["--checkpoint", "{tmp}/absent.pt", "--index", "{tmp}", "{tmp}/absent.jpg"],
                        "image files are missing"),
    "retrieval-benchmark": (["--checkpoint", "{tmp}/absent.pt", "--out", "{tmp}/b"], "checkpoint not found"),
    "retrieval-verify": (["--config", "{tmp}/absent.yaml"], "config file not found"),
    "retrieval-viz": (["curve", "{tmp}/absent", "--out", "{tmp}/c.png"], "absent"),
    "retrieval-demo": (["--config", "{tmp}/absent.yaml", "--out", "{tmp}/demo"], "config file not found"),
    "retrieval-serve": (["--checkpoint", "{tmp}/absent.pt", "--index", "{tmp}"], "checkpoint not found"),
    "retrieval-export": (["--checkpoint", "{tmp}/absent.pt", "--format", "torchscript", "--out", "{tmp}/m.pt"],
                         "checkpoint not found"),
}
SUBCOMMANDS = {"retrieval-viz"}  # -q / -v belong to each sub-command: `retrieval-viz curve -v ...`


def test_setup_cfg_lists_the_commands_and_they_are_installed():
    assert set(SCRIPTS) == set(FAILING)  # a new command needs a line in FAILING (and so gets both tests)
    bin_dir = Path(sys.executable).parent
    missing = [name for name in SCRIPTS if not (bin_dir / name).is_file()]
    assert not missing, f"not installed in {bin_dir} (pip install -e .): {missing}"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_and_lists_every_flag(name, capsys):
    module = importlib.import_module(SCRIPTS[name])
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0 and err == ""
    parser = module.build_parser()
    assert out.startswith(f"usage: {parser.prog} ")
    assert parser.description.split(".")[0] in " ".join(out.split())  # the description, rewrapped
    options = _options(parser)
    assert {"--help"} | (set() if name in SUBCOMMANDS else {"-v", "--verbose"}) <= options
    assert not [o for o in options if o not in out], out


def test_each_viz_picture_has_its_own_help(capsys):
    from retrieval.cli import viz

    sub = next(a for a in viz.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"attention", "explain", "curve", "scores", "localisation"}
    for picture, parser in sub.choices.items():
        with pytest.raises(SystemExit) as exit_:
            viz.main([picture, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: retrieval-viz {picture} ")
        assert {"--help", "-v", "--verbose"} <= _options(parser)
        assert not [o for o in _options(parser) if o not in out], (picture, out)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_verbose_adds_the_traceback_the_error_line_hides(name, tmp_path, capsys):
    module = importlib.import_module(SCRIPTS[name])
    argv, words = FAILING[name]
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and words in errors[0], err
    at = 1 if name in SUBCOMMANDS else 0
    assert module.main([*argv[:at], "-v", *argv[at:]]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == errors  # the same line, after it
    assert err.rstrip().splitlines()[-1] == errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written either way
