"""DDP against one process: 2 gloo ranks on half batches end where one process on the whole batch ends.

The ranks run the project's own distributed path under ``torchrun``: ``init_distributed``, DDP around
the network, ``RetrievalLoss(distributed=True)`` (PML's gathering wrappers, which scale the loss by
world_size), ``broadcast_parameters`` of the proxies and ``trainer.train_step``, which calls
``sync_loss_gradients`` (proxy gradients summed and divided by world_size²). The reference is the
same ``train_step`` in this process on the combined batch, without any of it. A rank-vs-rank check
cannot see a wrong factor (both ranks run the same wrong code); this comparison does.

Both sides compute in float64. The two sides add the same numbers in different orders (a gathered
batch against one batch, gloo's all-reduce, per-CPU SIMD widths and thread counts), so in float32
they agree only to its rounding amplified by four SGD steps: 1.7e-5 on an AVX-512 Xeon, under 1e-5
on an AVX2 EPYC. In float64 the same reorderings leave differences
of order 1e-13 (measured: at most 9e-14 on the Xeon), so the tolerance below (1e-9) is loose against
rounding on any CPU and still 9 orders of magnitude below what a wrong gradient factor does (2.56
for world_size instead of world_size²).

Run as a script (by torchrun) this file is the rank worker: ``python <this file> OUT_DIR``.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from retrieval.config import LossConfig, OptimConfig
from retrieval import parallel
from retrieval.engine.run import Progress
from retrieval.engine.trainer import train_step
from retrieval.losses import RetrievalLoss
from retrieval.optim import build_optimizer

WORLD, BATCH, IN_DIM, DIM, CLASSES, STEPS, SEED = 2, 16, 12, 8, 4, 4, 7
TOLERANCE = 1e-9  # float64: see the module docstring
# proxy_anchor: proxies at 10× the lr, so a wrong proxy-gradient factor moves them visibly in 4 steps.
# triplet with its default batch-hard miner, mined on the gathered batch.
LOSSES = {"proxy_anchor": LossConfig(name="proxy_anchor", miner="none", cls_weight=0.0),
          "triplet": LossConfig(name="triplet", miner="batch_hard", cls_weight=0.0)}


class TinyNet(torch.nn.Module):
    """Two linear layers, no BatchNorm (whose batch statistics would differ between B/2 and B); (embeddings, None)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(IN_DIM, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM))

    def forward(self, x):
        return torch.nn.functional.normalize(self.layers(x), dim=1), None


def _batches():
    """STEPS fixed batches of (BATCH, IN_DIM) inputs, CLASSES classes interleaved so each half holds all of them."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(BATCH) % CLASSES
    return [(torch.randn(BATCH, IN_DIM, generator=gen) + labels[:, None].float(), labels) for _ in range(STEPS)]


def _train(loss_name: str, info: parallel.DistInfo) -> tuple[dict, dict]:
    """SGD steps of ``train_step`` on this rank's part of each batch, in float64; (network, loss) state dicts."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _train_in_default_dtype(loss_name, info)
    finally:
        torch.set_default_dtype(previous)


def _train_in_default_dtype(loss_name: str, info: parallel.DistInfo) -> tuple[dict, dict]:
    torch.manual_seed(SEED + info.rank)  # ranks start apart: DDP and broadcast_parameters must align them
    model = TinyNet()
    loss = RetrievalLoss(LOSSES[loss_name], CLASSES, DIM, distributed=info.enabled).double()  # PML's proxies are float32
    optimizer = build_optimizer(OptimConfig(name="sgd", lr=0.5, momentum=0.9, proxy_lr_mult=10.0), model, loss)
    net = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    parallel.broadcast_parameters(loss, info)
    run = SimpleNamespace(device=torch.device("cpu"), memory_format=torch.contiguous_format, dtype=None, net=net,
                          forward=net,
                          loss=loss, optimizer=optimizer, info=info, progress=Progress(), steps_per_epoch=STEPS,
                          cfg=SimpleNamespace(train=SimpleNamespace(grad_clip=0.0)),
                          scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                          scaler=torch.amp.GradScaler("cpu", enabled=False), run_dir=Path("."))
    part = BATCH // info.world_size
    for images, labels in _batches():
        rows = slice(info.rank * part, (info.rank + 1) * part)
        train_step(run, images[rows], labels[rows])
    return model.state_dict(), loss.state_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out_dir: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
           f"--master_port={_free_port()}", __file__, str(out_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory) -> Path:
    """One torchrun launch trains both losses (its start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(out)
    return out


def _assert_close(name: str, got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key in want:
        diff = (got[key] - want[key]).abs().max().item()
        assert got[key].dtype == torch.float64, f"{name} {key}: computed in {got[key].dtype}, not float64"
        assert diff <= TOLERANCE, f"{name} {key}: max |DDP - single process| = {diff:.3g}"


def _check(loss_name: str, out: Path) -> None:
    model_ref, loss_ref = _train(loss_name, parallel.DistInfo())
    torch.manual_seed(SEED)
    start = TinyNet().state_dict()  # the initial weights (rank 0's): training must have moved them
    assert any((model_ref[k] - start[k]).abs().max() > 1e-2 for k in start)
    for rank in range(WORLD):
        saved = torch.load(out / f"{loss_name}_rank{rank}.pt")
        _assert_close(f"{loss_name} rank {rank} weights", saved["model"], model_ref)
        _assert_close(f"{loss_name} rank {rank} proxies", saved["loss"], loss_ref)


@pytest.mark.slow
def test_ddp_proxy_anchor_matches_one_process_on_the_whole_batch(ranks_out):
    _check("proxy_anchor", ranks_out)


@pytest.mark.slow
def test_ddp_triplet_matches_one_process_on_the_whole_batch(ranks_out):
    _check("triplet", ranks_out)


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    info = parallel.init_distributed("cpu")
    assert info.world_size == WORLD
    for loss_name in LOSSES:
        model, loss = _train(loss_name, info)
        torch.save({"model": model, "loss": loss}, f"{out_dir}/{loss_name}_rank{info.rank}.pt")
    parallel.shutdown(info)


if __name__ == "__main__":
    _worker(sys.argv[1])
