"""ImageDataset: normalised tensors, contiguous labels, crops, cache; build_splits keys and transforms."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from retrieval.config import DataConfig
from retrieval.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, build_splits, build_transforms, crop_box


def _records(paths, labels, box=(np.nan,) * 4):
    return pd.DataFrame({"path": [str(p) for p in paths], "label": labels, "split": "test",
                         **{k: v for k, v in zip(("x1", "y1", "x2", "y2"), box)}})


def test_item_is_normalised_tensor_with_contiguous_label(tmp_path, make_image):
    paths = [make_image(tmp_path / f"{i}.png", size=(9, 7), colour=(255, 255, 255)) for i in range(3)]
    ds = ImageDataset(_records(paths, [40, 7, 40]), build_transforms(DataConfig(image_size=6, resize=8), False))
    image, label = ds[0]
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert image.shape == (3, 6, 6) and image.dtype == torch.float32
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected)
    assert list(ds.labels) == [1, 0, 1] and list(ds.class_ids) == [7, 40] and ds.num_classes == 2
    assert label == 1 and ds.paths[0] == str(paths[0])


def test_crop_box_clamps_and_ignores_nan(tmp_path, make_two_tone):
    from PIL import Image

    img = Image.open(make_two_tone(tmp_path / "t.png", size=(20, 10))).convert("RGB")
    assert crop_box(img, (np.nan,) * 4).size == (20, 10)
    assert crop_box(img, (-5, -5, 8, 50)).size == (8, 10)
    assert crop_box(img, (5, 5, 5, 5)).size == (20, 10)  # an empty box keeps the whole image


def test_cache_gives_the_same_tensors(tmp_path, make_two_tone):
    paths = [make_two_tone(tmp_path / f"{i}.png", size=(16, 16)) for i in range(4)]
    tf = build_transforms(DataConfig(image_size=16, resize=16), False)
    plain, cached = ImageDataset(_records(paths, [1, 1, 2, 2]), tf), ImageDataset(_records(paths, [1, 1, 2, 2]), tf)
    cached.fill_cache(16, num_workers=2)
    for i in range(4):
        torch.testing.assert_close(plain[i][0], cached[i][0])


def test_transforms_follow_cgd():
    cfg = DataConfig(image_size=16, resize=20)
    train, test = build_transforms(cfg, True), build_transforms(cfg, False)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].size == (20, 20) and test.transforms[0].size == (16, 16)
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    assert train(img).shape == test(img).shape == (3, 16, 16)

    def normalised(pil):  # the reference, without torchvision: PIL pixels / 255, ImageNet mean and std
        a = (np.asarray(pil, dtype=np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())

    torch.testing.assert_close(test(img), normalised(img.resize((16, 16), Image.BILINEAR)))
    # train: a 16×16 window of the 20×20 resize, flipped or not; every draw is one of those 50
    big = normalised(img.resize((20, 20), Image.BILINEAR))
    windows = {(y, x, flip): big[:, y:y + 16, x:x + 16].flip(-1) if flip else big[:, y:y + 16, x:x + 16]
               for y in range(5) for x in range(5) for flip in (False, True)}
    torch.manual_seed(0)
    drawn = []
    for _ in range(40):
        out = train(img)
        found = [key for key, window in windows.items() if torch.allclose(out, window, atol=1e-5)]
        assert len(found) == 1, found
        drawn.append(found[0])
    assert len(set(drawn)) > 10 and {flip for _, _, flip in drawn} == {False, True}


def test_resized_crop_takes_the_chosen_share_of_the_image():
    """data.train_crop=resized: RandomResizedCrop over crop_scale of the area, aspect 3/4–4/3 (Musgrave
    et al. 2020). A horizontal ramp shows how wide each crop was: a crop of a fraction s of the area
    with aspect r spans sqrt(s·r) of the image's width."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 80, dtype=np.float32), (80, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).round().astype(np.uint8))
    width = 255 / IMAGENET_STD[0] / 255  # the ramp's full span after normalisation

    def spans(cfg, draws=60):
        transform = build_transforms(cfg, True)
        torch.manual_seed(0)
        outs = [transform(img)[0] for _ in range(draws)]
        return np.array([float(o.max() - o.min()) / width for o in outs])

    small = spans(DataConfig(image_size=32, resize=80, train_crop="resized", crop_scale=[0.09, 0.09]))
    assert small.min() > np.sqrt(0.09 * 3 / 4) - 0.06 and small.max() < np.sqrt(0.09 * 4 / 3) + 0.06
    assert small.std() > 0.01  # the aspect ratio varies from draw to draw
    whole = spans(DataConfig(image_size=32, resize=80, train_crop="resized", crop_scale=[1.0, 1.0]))
    assert whole.min() > 0.95  # the whole image (its aspect 1 is within 3/4–4/3)
    fixed = spans(DataConfig(image_size=32, resize=80))  # the CGD crop: always 32 of 80 columns
    assert np.allclose(fixed, 31 / 79, atol=0.02)
    names = [type(t).__name__ for t in build_transforms(DataConfig(train_crop="resized"), True).transforms]
    assert names == ["Resize", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


@pytest.mark.parametrize("cache", [False, True])
def test_build_splits_synthetic(tmp_path, cache):
    cfg = DataConfig(root=str(tmp_path / "syn"), synthetic_classes=6, synthetic_per_class=3, synthetic_size=24,
                     image_size=16, resize=20, cache=cache, num_workers=0)
    splits = build_splits(cfg)
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == len(splits["test"]) == 9
    assert not set(splits["train"].class_ids) & set(splits["test"].class_ids)
    assert splits["train"][0][0].shape == splits["test"][0][0].shape == (3, 16, 16)
