"""Shared by the engine tests: a tiny generated data set and a config that trains on it in seconds."""
import pytest

from retrieval.config import load_config

TINY = [
    "data.name=synthetic", "data.synthetic_classes=12", "data.synthetic_per_class=8", "data.synthetic_size=40",
    "data.image_size=32", "data.resize=36", "data.batch_size=16", "data.m_per_class=4", "data.num_workers=0",
    "model.backbone=resnet18", "model.embedding_dim=32", "model.descriptors=SG", "model.pretrained=none",
    "optim.lr=1e-3", "optim.scheduler=cosine", "train.steps_per_epoch=3", "train.precision=fp32",
    "eval.recall_k=1,2", "eval.batch_size=32",
]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic") / "data"


def tiny_config(data_root, out, *extra):
    return load_config(None, TINY + [f"data.root={data_root}", f"train.out_dir={out}", *extra])
