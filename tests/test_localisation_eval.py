"""The localisation runner and `retrieval-viz localisation`: masks and boxes at the network input, skips, table/JSON."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.checkpoint import save_checkpoint
from retrieval.cli.viz import main
from retrieval.config import load_config, to_dict
from retrieval.data import build_splits
from retrieval.data.synthetic import generate
from retrieval.localisation_eval import CENTRE_PRIOR, GRAD_CAM, score_localisation, select, skip_reason, target_masks
from retrieval.models import build_model


def _synthetic_cfg(root, attention="bam"):
    return load_config(None, [f"data.root={root}", "data.synthetic_classes=6", "data.synthetic_per_class=3",
                              "data.synthetic_size=32", "data.image_size=32", "data.resize=36",
                              "model.backbone=resnet18", "model.embedding_dim=16", f"model.attention={attention}"])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc") / "data"
    generate(root, num_classes=6, per_class=3, size=32, workers=1)
    return root


def _checkpoint(cfg, path):
    torch.manual_seed(0)
    model = build_model(cfg.model, 0, load_weights=False).eval()
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 0})
    return model


def test_select_spreads_and_bounds():
    np.testing.assert_array_equal(select(10, None), np.arange(10))
    assert select(10, 3).tolist() == [0, 4, 9]
    assert len(select(1000, 300)) == 300 and select(5, 50).tolist() == [0, 1, 2, 3, 4]


def test_masks_come_from_the_generated_pngs(synthetic):
    dataset = build_splits(_synthetic_cfg(synthetic).data)["test"]
    masks = target_masks(dataset, np.arange(3), 32)
    for k in range(3):
        with Image.open(dataset.records.loc[k, "mask"]) as png:
            np.testing.assert_array_equal(masks[k], np.asarray(png) > 0)  # 32 px images: the same grid
    assert skip_reason(dataset, np.arange(len(dataset))) is None


BOX_DATA = ["data.name=csv", "data.train_classes=0,0", "data.test_classes=1,1"]


def _box_csv(tmp_path, boxes):
    """Class 0 (train) and class 1 (test) each hold one 80×40 image per box."""
    lines = ["path,label,x1,y1,x2,y2"]
    for i, (label, box) in enumerate((label, box) for label in (0, 1) for box in boxes):
        Image.fromarray(np.full((40, 80, 3), 120, np.uint8)).save(tmp_path / f"{i}.png")  # 80 wide, 40 high
        lines.append(f"{i}.png,{label}," + ",".join(str(v) for v in box))
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [*BOX_DATA, f"data.root={tmp_path / 'd.csv'}", "data.image_size=32", "data.resize=32"])
    return build_splits(cfg.data)["test"]


def test_boxes_become_masks_at_the_network_input(tmp_path):
    dataset = _box_csv(tmp_path, [(0, 0, 40, 20), (20, 10, 60, 30)])
    masks = target_masks(dataset, np.arange(2), 32)
    # the 80×40 image is resized to 32×32: x scaled by 0.4, y by 0.8
    assert masks[0, :16, :16].all() and masks[0].sum() == 16 * 16
    assert masks[1, 8:24, 8:24].all() and masks[1].sum() == 16 * 16
    assert skip_reason(dataset, np.arange(2)) is None


def test_whole_image_boxes_are_skipped_with_a_reason(tmp_path, capsys):
    dataset = _box_csv(tmp_path, [(0, 0, 80, 40), (1, 0, 80, 40)])  # as CUB_mini: boxes = images
    assert "cover 99 %" in skip_reason(dataset, np.arange(2))
    cfg = _synthetic_cfg(tmp_path / "unused")
    ckpt = tmp_path / "m.pt"
    _checkpoint(cfg, ckpt)
    code = main(["localisation", "--checkpoint", str(ckpt), "-q", *BOX_DATA, f"data.root={tmp_path / 'd.csv'}"])
    assert code == 0 and "localisation skipped" in capsys.readouterr().out


def test_scores_of_every_map_and_the_command(synthetic, tmp_path, capsys):
    cfg = _synthetic_cfg(synthetic)
    model = _checkpoint(cfg, tmp_path / "m.pt")
    dataset = build_splits(cfg.data)["test"]
    scores = score_localisation(model, dataset, 32, batch_size=4, limit=7)
    assert list(scores) == [GRAD_CAM, "BAM after stage 1 gate", "BAM after stage 2 gate", "BAM after stage 3 gate",
                            CENTRE_PRIOR]
    for s in scores.values():
        assert s["images"] == 7 and 0 <= s["pointing_game"] <= 1 and 0 <= s["energy"] <= 1
    assert main(["localisation", "--checkpoint", str(tmp_path / "m.pt"), "--limit", "7", "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(printed["scores"][k] == pytest.approx(v) for k, v in scores.items())
    assert main(["localisation", "--checkpoint", str(tmp_path / "m.pt"), "--limit", "7", "-q"]) == 0
    table = capsys.readouterr().out
    assert "| method | pointing game | energy inside |" in table and GRAD_CAM in table and CENTRE_PRIOR in table


def test_plain_model_scores_grad_cam_and_the_prior_only(synthetic):
    cfg = _synthetic_cfg(synthetic, attention="none")
    model = build_model(cfg.model, 0, load_weights=False)
    scores = score_localisation(model, build_splits(cfg.data)["test"], 32, limit=3)
    assert list(scores) == [GRAD_CAM, CENTRE_PRIOR]
