"""The Embedder (device, precision, memory format; batches, loaders, tables) and evaluate_splits, tiny model."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from retrieval.config import Config, ModelConfig
from retrieval.data import PathsDataset, table_from_paths
from retrieval.embed import Embedder
from retrieval.errors import ConfigError, DataError, ImageError
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
def test_embed_loader_matches_plain_forward(model, images, precision, atol):
    x, y = images
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    model.train()
    emb, labels = Embedder(model, "cpu", precision).embed_loader(loader, progress=False)
    assert model.training  # mode restored for the training loop
    assert emb.dtype == np.float32 and emb.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(labels, y.numpy())
    ref = reference(model, x)
    np.testing.assert_allclose(emb, ref, atol=atol)
    assert (emb * ref).sum(1).min() > 0.99


def _conv(model):
    return next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)


def test_the_embedder_owns_device_dtype_and_memory_format(model, images):
    x, _ = images
    try:
        fast = Embedder(model, "cpu", "bf16")
        assert fast.dtype == torch.bfloat16 and fast.memory_format == torch.channels_last
        assert _conv(model).is_contiguous(memory_format=torch.channels_last)  # placed once, kept
        plain = Embedder(model.eval(), "cpu", "fp32", channels_last=False)
        assert plain.dtype is None and _conv(model).is_contiguous()
        batch = plain.embed(x[:5])
        assert batch.dtype == torch.float32 and batch.shape == (5, 32)
        np.testing.assert_allclose(batch.numpy(), reference(model, x[:5]), atol=1e-5)
        with pytest.raises(ConfigError, match="--precision=fp16 needs a CUDA device"):
            Embedder(model, "cpu", "fp16")
    finally:
        model.to(memory_format=torch.contiguous_format)


def test_empty_loader_is_an_error(model):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0)), batch_size=4)
    with pytest.raises(DataError, match="no images"):
        Embedder(model, "cpu").embed_loader(empty, progress=False)


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
        Embedder(model, "cpu", batch_size=1, workers=1, transform=transform).embed_table(table, progress=False)
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
    embedder = Embedder(model, "cpu", "fp32", channels_last=False, workers=0)  # fast path covered above
    ref = reference(model, x)
    got = evaluate_splits(embedder, {"train": None, "test": TensorDataset(x, y)}, cfg, progress=False)
    assert got.pop("mean_norm") == pytest.approx(float(np.linalg.norm(ref.mean(axis=0))), abs=1e-5)
    assert got == pytest.approx(retrieval_metrics(ref, y.numpy(), ks=(1, 2)), abs=1e-6)
    assert set(got) == {"recall@1", "recall@2", "map@r", "r_precision"}
    split = {"query": TensorDataset(x[:8], y[:8]), "gallery": TensorDataset(x[8:], y[8:])}
    got = evaluate_splits(embedder, split, cfg, progress=False)
    assert got.pop("mean_norm") == pytest.approx(float(np.linalg.norm(ref[8:].mean(axis=0))), abs=1e-5)  # gallery
    assert got == pytest.approx(retrieval_metrics(ref[:8], y[:8].numpy(), ref[8:], y[8:].numpy(), ks=(1, 2)),
                                abs=1e-6)
    val = evaluate_splits(embedder, {"test": TensorDataset(x[8:], y[8:]), "val": TensorDataset(x[:8], y[:8])}, cfg,
                          progress=False)
    assert val["val_recall@1"] == pytest.approx(retrieval_metrics(ref[:8], y[:8].numpy(), ks=(1,))["recall@1"])
    with pytest.raises(DataError, match="expected a 'test' split"):
        evaluate_splits(embedder, {"train": None, "query": split["query"]}, cfg)
