"""Provenance: the versions recorded beside every result, and the distribution those come from."""
import configparser
from pathlib import Path

import retrieval
from retrieval.provenance import versions

ROOT = Path(__file__).resolve().parents[1]


def test_versions_name_python_this_package_and_its_dependencies():
    found = versions()
    assert found["retrieval"] == retrieval.__version__ and found["python"].count(".") == 2
    assert {"torch", "numpy"} <= set(found)


def test_the_distribution_has_its_own_name_and_the_package_s_version():
    """'retrieval' on PyPI is another project: the distribution is cbam-cgd-retrieval, the import package retrieval."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["name"] == "cbam-cgd-retrieval"
    assert setup["metadata"]["version"] == "attr: retrieval.__version__"
    assert setup["options.packages.find"]["include"] == "retrieval, retrieval.*"
