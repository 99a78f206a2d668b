"""`make demo`: the whole pipeline on generated data, through the same commands a user runs.

1. generate the synthetic data set (120 classes of drawn objects; 60 train, 60 unseen test),
2. score the untrained network on the test classes,
3. train ``configs/demo.yaml`` (train_embed.py),
4. index the unseen test classes (build_index.py) and run a few top-K queries (query.py --grid),
5. print Recall@K / MAP@R of the untrained and the trained network side by side, the spread of
   the test embeddings (norm of their mean, Recall@1 through a PQ16 index, mean cosines of
   same- and different-class pairs), the localisation score (pointing game, energy inside the
   object mask) of the trained network beside the untrained one and a centre prior, and draw
   the Recall@K curve, the Grad-CAM / attention-gate picture, the score distributions and why
   the first query matches its top result (``explain.png``, retrieval/explain.py).

Everything goes under ``--out`` (default ``runs/demo``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from ..checkpoint import read_checkpoint
from ..config import load_config
from ..errors import RetrievalError
from ..files import atomic_write_text
from . import build_index as build_index_cli
from . import query as query_cli
from . import train as train_cli
from .common import add_logging_args, command

log = logging.getLogger("retrieval.demo")
LOCALISATION_IMAGES = 240  # test images the localisation score uses (a few seconds on 2 CPU cores)
MARKER = "demo.json"  # written last; a folder holding it is a finished demo the next one may replace
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} exists and is not a finished demo folder; choose another --out")
        print(f"replacing the earlier demo in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _untrained_metrics(cfg) -> tuple[dict[str, float], torch.nn.Module]:
    """(metrics, model) of the same network with random weights: the floor the training has to beat."""
    from ..data import build_splits
    from ..embed import Embedder
    from ..evaluate import evaluate_splits
    from ..models import build_model
    from ..seeding import seed_everything

    splits = build_splits(cfg.data)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, num_classes=splits["train"].num_classes)
    test = {k: v for k, v in splits.items() if k != "val"}  # the table compares test metrics
    embedder = Embedder(model.eval(), "cpu", cfg.train.precision, cfg.train.channels_last, cfg.eval.batch_size,
                        cfg.data.num_workers, flag="train.precision")
    return evaluate_splits(embedder, test, cfg, progress=False), model


def _localisation(cfg, checkpoint: Path, untrained: torch.nn.Module) -> tuple[dict, str]:
    """Pointing game / energy inside the object masks of the trained and the untrained network, + centre prior."""
    from ..checkpoint import load_model
    from ..data import build_splits
    from ..localisation_eval import CENTRE_PRIOR, format_table, score_localisation

    dataset = build_splits(dataclasses.replace(cfg.data, cache=False))["test"]  # 240 images: no cache needed
    model, model_cfg, _ = load_model(checkpoint)
    size = model_cfg.data.image_size
    scores = {name: score_localisation(net, dataset, size, cfg.eval.batch_size, LOCALISATION_IMAGES)
              for name, net in (("untrained", untrained), ("trained", model))}
    scores["untrained"].pop(CENTRE_PRIOR)  # the same numbers twice: keep one row
    count = scores["trained"][CENTRE_PRIOR]["images"]
    text = (f"localisation on {count} test images (object masks of the generated data; pointing game: the "
            f"map's maximum on the object, energy: share of the map inside it):\n"
            + format_table(scores))
    return scores, text


def _query_images(index_dir: Path, count: int) -> list[str]:
    """One gallery image from each of ``count`` different test classes."""
    from ..index import load_index

    meta = load_index(index_dir)[1]
    firsts = meta.groupby("label", sort=True).head(1)
    step = max(1, len(firsts) // count)
    return list(firsts["path"].iloc[::step][:count])


def _table(untrained: dict, trained: dict) -> str:
    rows = ["| metric | untrained | trained |", "| --- | --- | --- |"]
    rows += [f"| {k} | {untrained.get(k, float('nan')):.3f} | {trained[k]:.3f} |" for k in trained]
    return "\n".join(rows)


def _top_other(index_dir: Path, query: str) -> str:
    """The gallery path of ``query``'s nearest neighbour other than itself (the query is a gallery image)."""
    import numpy as np

    from ..index import load_index, search

    index, meta, _ = load_index(index_dir)
    row = int(np.flatnonzero(meta["path"].astype(str).to_numpy() == query)[0])
    _, ids = search(index, np.asarray(index.reconstruct(row), dtype=np.float32)[None], 2)
    return str(meta["path"].iloc[next(int(i) for i in ids[0] if int(i) not in (row, -1))])


def _pictures(out: Path, cfg, checkpoint: Path, queries: list[str], index_dir: Path) -> list[Path]:
    """Recall@K curve, attention and pair-explanation figures; skipped with a note when matplotlib is missing."""
    made = []
    try:
        from ..checkpoint import load_model
        from ..viz import attention_figure, recall_curve

        recall_curve([out / "train" / "metrics.csv"], out / "recall.png", labels=["demo"])
        made.append(out / "recall.png")
        model, model_cfg, _ = load_model(checkpoint)
        attention_figure(model, queries[:4], model_cfg, out / "attention.png")
        made.append(out / "attention.png")
        from ..viz.explain import explain_figure

        explain_figure(model, queries[0], _top_other(index_dir, queries[0]), model_cfg, out / "explain.png")
        made.append(out / "explain.png")
    except ImportError as err:
        print(f"(pictures skipped: {err})")
    return made


def _embedding_space(index_dir: Path, out: Path) -> tuple[dict, str]:
    """Spread, compressibility and scores of the indexed test embeddings (docs/training.md), + scores.png."""
    import numpy as np

    from ..embedding_space import describe
    from ..index import load_index

    index, meta, _ = load_index(index_dir)
    x = np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)  # a tensor under faiss torch_utils
    y = meta["label"].astype(str).factorize()[0]
    space = describe(x, y, ("PQ16",))
    try:
        from ..viz.scores import score_figure

        score_figure(x, y, out / "scores.png", title="demo: unseen test classes")
    except ImportError:
        pass
    text = (f"embedding space of the {len(x)} test images ({x.shape[1]}-d): norm of the mean embedding "
            f"{space['mean_norm']:.3f} (0 = spread over the sphere, 1 = one shared direction); leave-one-out "
            f"Recall@1 exact {space['exact_recall@1']:.3f}, through a PQ16 index {space['pq16_recall@1']:.3f} "
            f"({100 * space['pq16_recall@1'] / max(space['exact_recall@1'], 1e-9):.0f} %); mean cosine of "
            f"same-class pairs {space['cos_same']:.3f}, of different-class pairs {space['cos_diff']:.3f}")
    return {k: float(np.float64(v)) for k, v in space.items()}, text


def _reported_checkpoint(run_dir: Path, cfg) -> tuple[Path, str]:
    """best.pt when validation classes chose one (never the test classes), else the last epoch's model."""
    best = run_dir / "best.pt"
    if best.is_file():
        epoch = read_checkpoint(best)["epoch"]
        return best, (f"best.pt: epoch {epoch} of {cfg.train.epochs}, chosen on {cfg.data.val_classes} validation "
                      "classes held out of training")
    return run_dir / "last.pt", f"last.pt: epoch {cfg.train.epochs}, no selection"


def _step(command, argv: list[str]) -> None:
    """Run one of the project's commands; its error message is already printed when it fails."""
    code = command(argv)
    if code:
        raise RetrievalError(f"demo stopped: {command.__module__.rsplit('.', 1)[-1]} exited with status {code}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="demo folder (replaced if it holds an earlier demo)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config (default configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    add_logging_args(parser)
    return parser


@command(build_parser)
def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    overrides = [f"data.root={out / 'data'}", f"train.out_dir={out / 'train'}", *args.overrides]
    cfg = load_config(args.config, overrides)  # validate before touching the folder
    _prepare(out)
    start = time.perf_counter()
    stamps = {}

    print("== 1/5 data + untrained network ==")
    untrained, untrained_model = _untrained_metrics(cfg)
    stamps["data_untrained_s"] = time.perf_counter() - start

    print("== 2/5 training ==")
    _step(train_cli.main, ["--config", args.config, *overrides] + (["-q"] if args.quiet else []))
    stamps["train_s"] = time.perf_counter() - start - sum(stamps.values())
    checkpoint, chosen = _reported_checkpoint(out / "train", cfg)

    print("== 3/5 index of the unseen test classes ==")
    index_dir = out / "index"
    _step(build_index_cli.main, ["--checkpoint", str(checkpoint), "--out", str(index_dir), "--dataset-config",
                          str(out / "train" / "config.yaml"), "--split", "test", "-q"])

    print("== 4/5 top-5 queries (the query itself is in the gallery, so it comes first) ==")
    queries = _query_images(index_dir, 6)
    _step(query_cli.main, ["--checkpoint", str(checkpoint), "--index", str(index_dir), "-k", "5", *queries,
                    "--grid", str(out / "grid.png"), "-q"])
    trained = {k: float(v) for k, v in read_checkpoint(checkpoint)["metrics"].items() if not k.startswith("val_")}

    print("== 5/5 results ==")
    pictures = _pictures(out, cfg, checkpoint, queries, index_dir)
    space, space_text = _embedding_space(index_dir, out)
    began = time.perf_counter()
    localisation, localisation_text = _localisation(cfg, checkpoint, untrained_model)
    stamps["localisation_s"] = time.perf_counter() - began
    if (out / "scores.png").is_file():
        pictures.append(out / "scores.png")
    total = time.perf_counter() - start
    table = _table(untrained, trained)
    print(f"Recall@K on {cfg.data.synthetic_classes // 2} unseen test classes (leave-one-out), "
          f"untrained vs trained ({chosen}):\n{table}")
    print(space_text)
    print(localisation_text)
    print(f"pictures: {', '.join(str(p) for p in [out / 'grid.png', *pictures])}")
    print(f"demo took {total:.0f} s (training {stamps['train_s']:.0f} s, localisation "
          f"{stamps['localisation_s']:.0f} s); everything is under {out}/")
    result = {"untrained": untrained, "trained": trained, "checkpoint": str(checkpoint), "selection": chosen,
              "embedding_space": space, "localisation": localisation,
              "seconds": {**stamps, "total_s": total},
              "config": args.config, "overrides": overrides}
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / MARKER, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
