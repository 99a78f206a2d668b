"""Embedding extraction, image tables, and evaluate_splits on a tiny real model."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from retrieval.config import Config, ModelConfig
from retrieval.data import PathsDataset, table_from_paths
from retrieval.embed import embed_dataset, embed_table
from retrieval.errors import DataError, ImageError
from retrieval.evaluate import evaluate_splits
from retrieval.metrics import retrieval_metrics
from retrieval.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", pretrained="none", embedding_dim=32, descriptors="SG")
    return build_model(cfg, num_classes=4, load_weights=False)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 3, 32, 32, generator=g), torch.arange(20) % 4


def reference(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-5), ("bf16", 0.05)])
def test_embed_dataset_matches_plain_forward(model, images, precision, atol):
    x, y = images
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    model.train()
    emb, labels = embed_dataset(model, loader, "cpu", precision=precision, progress=False)
    assert model.training  # mode restored for the training loop
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in model.parameters())  # memory format restored
    assert emb.dtype == np.float32 and emb.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(labels, y.numpy())
    ref = reference(model, x)
    np.testing.assert_allclose(emb, ref, atol=atol)
    assert (emb * ref).sum(1).min() > 0.99


def test_channels_last_model_stays_channels_last(model, images):
    x, y = images
    model.to(memory_format=torch.channels_last)
    try:
        embed_dataset(model, DataLoader(TensorDataset(x, y), batch_size=8), "cpu", precision="fp32", progress=False)
        conv = model.backbone.body.conv1.weight if hasattr(model.backbone, "body") else next(
            p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last)
    finally:
        model.to(memory_format=torch.contiguous_format)


def test_empty_loader_is_an_error(model):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0)), batch_size=4)
    with pytest.raises(DataError, match="no images"):
        embed_dataset(model, empty, "cpu", progress=False)


def _save(path, size=40, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_unreadable_image_in_a_worker_names_the_file(model, tmp_path):
    from retrieval.data import build_transforms
    from retrieval.config import DataConfig

    good = _save(tmp_path / "ok.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    table = table_from_paths([good, bad])
    transform = build_transforms(DataConfig(image_size=32, resize=32), train=False)
    with pytest.raises(ImageError) as info:
        embed_table(model, table, transform, "cpu", batch_size=1, num_workers=1, progress=False)
    assert str(info.value).startswith(f"{bad}: not an image")  # no worker traceback in the message
    assert "Traceback" not in str(info.value)


def test_paths_dataset_yields_unknown_labels(tmp_path):
    ds = PathsDataset([_save(tmp_path / "a.jpg")], transform=None)
    image, label = ds[0]
    assert label == -1 and image.size == (40, 40)


def test_evaluate_splits_both_protocols(model, images):
    x, y = images
    cfg = Config()
    cfg.data.num_workers = 0
    cfg.eval.recall_k = [1, 2]
    cfg.train.precision, cfg.train.channels_last = "fp32", False  # fast path covered above
    ref = reference(model, x)
    got = evaluate_splits(model, {"train": None, "test": TensorDataset(x, y)}, cfg, "cpu", progress=False)
    assert got.pop("mean_norm") == pytest.approx(float(np.linalg.norm(ref.mean(axis=0))), abs=1e-5)
    assert got == pytest.approx(retrieval_metrics(ref, y.numpy(), ks=(1, 2)), abs=1e-6)
    assert set(got) == {"recall@1", "recall@2", "map@r", "r_precision"}
    split = {"query": TensorDataset(x[:8], y[:8]), "gallery": TensorDataset(x[8:], y[8:])}
    got = evaluate_splits(model, split, cfg, "cpu", progress=False)
    assert got.pop("mean_norm") == pytest.approx(float(np.linalg.norm(ref[8:].mean(axis=0))), abs=1e-5)  # gallery
    assert got == pytest.approx(retrieval_metrics(ref[:8], y[:8].numpy(), ref[8:], y[8:].numpy(), ks=(1, 2)),
                                abs=1e-6)
    val = evaluate_splits(model, {"test": TensorDataset(x[8:], y[8:]), "val": TensorDataset(x[:8], y[:8])}, cfg,
                          "cpu", progress=False)
    assert val["val_recall@1"] == pytest.approx(retrieval_metrics(ref[:8], y[:8].numpy(), ks=(1,))["recall@1"])
    with pytest.raises(DataError, match="expected a 'test' split"):
        evaluate_splits(model, {"train": None, "query": split["query"]}, cfg, "cpu")
