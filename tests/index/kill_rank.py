"""build_index.py as one rank of a torchrun job, where rank $KILL_RANK dies by SIGKILL just before writing its shard.

It waits until every other rank's shard receipt is on disk, so the killed job deterministically
leaves the trained index and the other shards finished and this rank's shard missing (its
saved embeddings, with --save-embeddings, are already written). No cleanup code runs in the
killed rank; torchrun then tears the others down. Used by tests/index/test_distributed_build.py.
"""
import os
import signal
import sys
import time

from retrieval.cli import build_index
from retrieval.index import distributed


def _die_before_writing(trained, embeddings, start, shard):
    world_size = int(os.environ["WORLD_SIZE"])
    others = [p for p in distributed.shard_paths(shard.parent, world_size) if p != shard]
    deadline = time.monotonic() + 120
    while not all(p.with_suffix(".json").is_file() for p in others):
        if time.monotonic() > deadline:
            sys.exit("kill_rank: the other ranks' shards never appeared")
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["KILL_RANK"]:
        distributed.build_shard = _die_before_writing  # what _build_shard calls to write the shard
    sys.exit(build_index.main(sys.argv[1:]))
