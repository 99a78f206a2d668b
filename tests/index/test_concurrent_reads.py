"""A reader never sees a mix of two versions of an index folder while a writer appends (issue #26)."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd

from retrieval.errors import IndexFormatError
from retrieval.index import build_index, load_index

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APPENDS = 60
WRITER = textwrap.dedent("""
    import sys
    import numpy as np, pandas as pd
    from retrieval.index import build_index
    rng = np.random.default_rng(1)
    for i in range(int(sys.argv[2])):
        x = rng.normal(size=(3, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        build_index(x, pd.DataFrame({"path": [f"a{i}_{j}.png" for j in range(3)], "label": "b"}), sys.argv[1],
                    append=True, manifest_extra={"checkpoint_sha256": "0" * 64})
""")


def test_loads_during_appends_see_one_version(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    folder = tmp_path / "idx"
    build_index(x, pd.DataFrame({"path": [f"{i}.png" for i in range(20)], "label": "a"}), folder,
                manifest_extra={"checkpoint_sha256": "0" * 64})
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(APPENDS)], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    loads, failures, counts = 0, [], set()
    deadline = time.monotonic() + 240
    while writer.poll() is None and time.monotonic() < deadline:
        try:
            index, meta, manifest = load_index(folder)
        except (IndexFormatError, OSError) as err:
            failures.append(f"{type(err).__name__}: {err}")
            continue
        loads += 1
        assert index.ntotal == len(meta) == manifest["count"]
        counts.add(manifest["count"])
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert failures == [], f"{len(failures)} of {loads + len(failures)} loads failed: {failures[:3]}"
    assert loads > 20 and len(counts) > 5, (loads, counts)  # the reads really overlapped the appends
    assert load_index(folder)[2]["count"] == 20 + 3 * APPENDS
