"""Every way checkpoint.py refuses a file: one CheckpointError naming the file and what is wrong, no code run."""
import shutil

import pytest
import torch

from retrieval.checkpoint import checkpoint_config, load_model, read_checkpoint, save_checkpoint
from retrieval.errors import CheckpointError


class _Payload:
    """Unpickling it calls open(marker, "w"): what a weights_only=False load of a hostile file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _refused(call, path, *match):
    with pytest.raises(CheckpointError) as err:
        call(path)
    message = str(err.value)
    assert str(path) in message, message
    for text in match:
        assert text in message, message
    cause = err.value
    assert cause.__cause__ is None and (cause.__context__ is None or cause.__suppress_context__)  # no torch chain
    return message


def test_missing_file_and_folder(tmp_path):
    assert _refused(read_checkpoint, tmp_path / "absent.pt") == f"checkpoint not found: {tmp_path / 'absent.pt'}"
    assert _refused(read_checkpoint, tmp_path).startswith("checkpoint not found")  # a folder is not a file


@pytest.mark.parametrize("how", ["garbage", "empty", "truncated"])
def test_unreadable_bytes(assets, tmp_path, how):
    path = tmp_path / f"{how}.pt"
    data = assets["ckpt"].read_bytes()
    path.write_bytes({"garbage": b"not a torch file", "empty": b"", "truncated": data[:len(data) // 2]}[how])
    _refused(read_checkpoint, path, "not a readable checkpoint (")


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "hostile.pt"
    torch.save({"model": _Payload(marker), "config": {}, "num_classes": 1}, path)
    message = _refused(read_checkpoint, path, "not a readable checkpoint (UnpicklingError")
    assert "weights_only" in message.lower() or "global" in message.lower(), message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: a plain load would have run it
    assert marker.exists()


@pytest.mark.parametrize("state, missing", [
    ([1, 2, 3], "model"),  # not a dict at all
    ({}, "model, config, num_classes"),
    ({"model": {}, "num_classes": 3}, "config"),
    ({"model": {}, "config": {}}, "num_classes"),
])
def test_other_torch_files_name_the_missing_keys(tmp_path, state, missing):
    path = tmp_path / "other.pt"
    torch.save(state, path)
    message = _refused(read_checkpoint, path, "not a retrieval checkpoint")
    assert message.endswith(f"(missing keys: {missing})")


def test_stored_config_of_another_version(assets, tmp_path):
    state = read_checkpoint(assets["ckpt"])
    state["config"]["model"]["no_such_key"] = 1
    path = tmp_path / "newer.pt"
    save_checkpoint(path, state)
    _refused(lambda p: checkpoint_config(read_checkpoint(p), p), path, "stored config is not valid for this version",
             "no_such_key")
    _refused(load_model, path, "stored config is not valid")


@pytest.mark.parametrize("how", ["missing", "shape"])
def test_weights_that_do_not_fit_the_config(assets, tmp_path, how):
    state = read_checkpoint(assets["ckpt"])
    key = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].ndim == 4)
    if how == "missing":
        del state["model"][key]
    else:
        state["model"][key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / f"{how}.pt"
    save_checkpoint(path, state)
    _refused(load_model, path, "weights do not fit the model its config describes", key)


def test_a_good_checkpoint_round_trips(assets, tmp_path):
    # the control for the refusals above: the same helpers accept the unmodified file
    path = tmp_path / "copy.pt"
    shutil.copyfile(assets["ckpt"], path)
    model, cfg, state = load_model(path)
    assert cfg.model.embedding_dim == 16 and state["num_classes"] == 3 and not model.training
    original = read_checkpoint(assets["ckpt"])["model"]
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
