"""libgomp throttling: main-thread forward alone, then while a second thread that ran one forward stays alive."""
import sys, time, statistics, threading
from pathlib import Path
import torch
from PIL import Image
from retrieval.embed import open_embedder
torch.set_num_threads(2)
emb = open_embedder(Path(sys.argv[1]), "cpu", workers=0, precision="auto")
img = next(Path("../shared/data/CUB_mini").rglob("*.jpg"))
x = emb.transform(Image.open(img).convert("RGB"))[None]
def timed(n=40):
    ts = []
    for i in range(n):
        t = time.perf_counter(); emb.embed(x); ts.append(time.perf_counter() - t); time.sleep(0.02)
    return 1000 * statistics.median(ts[5:])
before = timed()
stop = threading.Event()
def other():
    emb.embed(x)  # a second OpenMP master with its own team, kept while the thread lives
    stop.wait()
th = threading.Thread(target=other); th.start(); time.sleep(0.5)
during = timed()
stop.set(); th.join(); time.sleep(0.5)
after = timed()
print(f"main-thread forward p50: {before:.2f} ms alone, {during:.2f} ms while a second team lives, {after:.2f} ms after it ended")
