"""The NAME[:k=v,...] parser and the registry: defaults, types, and one named error per bad parameter."""
import pytest

from retrieval.errors import ConfigError
from retrieval.rerank import RERANKERS, RerankSpec, parse_rerank, resolve_rerank


def test_registry_names():
    assert list(RERANKERS) == ["none", "aqe", "dba", "dba_aqe", "kreciprocal"]


def test_parse_fills_defaults_and_types():
    spec = parse_rerank("kreciprocal:k1=20,k2=6,lambda=0.3")
    assert spec == RerankSpec("kreciprocal", {"k1": 20, "k2": 6, "lambda": 0.3, "candidates": 100})
    assert parse_rerank("none") == RerankSpec()
    assert parse_rerank(" aqe : n = 5 , alpha=0 ").args == {"n": 5, "alpha": 0.0}
    assert parse_rerank("dba:n=4.0").args["n"] == 4  # an integral number is an int
    assert str(parse_rerank("aqe:n=3")) == "aqe:n=3,alpha=3"
    assert parse_rerank(str(spec)) == spec  # the printed form parses back


@pytest.mark.parametrize("text,named", [
    ("aqe:n=0", "n must be > 0, got 0"),
    ("dba:n=-2", "n must be > 0"),
    ("aqe:alpha=-1", "alpha must be >= 0, got -1.0"),
    ("dba_aqe:dba_alpha=-0.5", "dba_alpha must be >= 0"),
    ("kreciprocal:k1=5,k2=6", "k2 must be <= k1=5, got 6"),
    ("kreciprocal:lambda=1.5", "lambda must be in [0, 1], got 1.5"),
    ("kreciprocal:lambda=-0.1", "lambda must be in [0, 1]"),
    ("kreciprocal:candidates=0", "candidates must be > 0"),
    ("aqe:n=2.5", "n must be an integer, got '2.5'"),
    ("aqe:alpha=nan", "alpha must be a finite number"),
    ("aqe:beta=1", "beta is not an argument of this method (allowed: n, alpha)"),
    ("none:n=1", "n is not an argument of this method (allowed: none)"),
    ("bogus", "'bogus' is not one of none, aqe, dba, dba_aqe, kreciprocal"),
    ("aqe:n", "expected NAME[:arg=value,...]"),
])
def test_bad_parameters_name_themselves(text, named):
    with pytest.raises(ConfigError) as err:
        parse_rerank(text)
    message = str(err.value)
    assert named in message and message.startswith("--rerank") and "\n" not in message
    assert isinstance(err.value, ValueError)


def test_config_keys():
    assert resolve_rerank("aqe", {"n": 4}).args == {"n": 4, "alpha": 3.0}
    with pytest.raises(ConfigError, match=r"^rerank\.args\.n must be > 0"):
        resolve_rerank("aqe", {"n": 0})
    with pytest.raises(ConfigError, match=r"^rerank\.name: 'x' is not one of"):
        resolve_rerank("x")


def test_config_section():
    from retrieval.config import load_config

    cfg = load_config(None, ["rerank.name=kreciprocal", "rerank.args={k1: 10, k2: 3}"])
    assert cfg.rerank.args == {"k1": 10, "k2": 3, "lambda": 0.3, "candidates": 100}
    assert load_config(None).rerank.name == "none"
    with pytest.raises(ConfigError, match="rerank.args.k2 must be <= k1=10"):
        load_config(None, ["rerank.name=kreciprocal", "rerank.args={k1: 10, k2: 30}"])
