"""A checkpoint's network as an ONNX model cached on disk, and an embedder that runs it without torch.

The first ``--runtime onnxruntime`` use of a checkpoint exports its embedding path to ONNX
(``retrieval.execution.OnnxNetwork``, several seconds) and stores the model here, keyed by the
checkpoint's sha256 and the image size, beside a small JSON file with what embedding needs
besides the network: the test transform (square resize, ImageNet mean/std), the embedding
dimension and the evaluation settings. Every later use opens the stored model instead of
exporting again, and ``CachedOnnxEmbedder`` embeds with Pillow, numpy and ONNX Runtime alone,
so that ``query.py --runtime onnxruntime`` on one image spends its time on the image, not on
importing torch (about 8 of its 9 s before).

The cache lives in ``$RETRIEVAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/cbam-cgd-retrieval``, else
``~/.cache/cbam-cgd-retrieval``; its files are written atomically and may be deleted at any
time (they are made again on the next use). A file that cannot be read is a miss, not an error.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .files import atomic_write_bytes, atomic_write_text, sha256_file
from .schema import EvalConfig

log = logging.getLogger(__name__)

FORMAT = 1  # of the JSON description; a cache entry of another format is a miss


def cache_dir() -> Path:
    """Where exported models are kept (see the module docstring)."""
    if os.environ.get("RETRIEVAL_CACHE_DIR"):
        return Path(os.environ["RETRIEVAL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cbam-cgd-retrieval"


def onnx_session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported model (a file or its bytes); threads: intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("running ONNX models needs onnxruntime: pip install onnxruntime "
                          "(or the project's 'export' extra)") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class CacheEntry:
    """One checkpoint's exported model at one image size: ``<sha256>-<size>px.onnx`` and ``.json``."""
    sha256: str
    image_size: int
    folder: Path

    @property
    def model_path(self) -> Path:
        return self.folder / f"{self.sha256}-{self.image_size}px.onnx"

    @property
    def description_path(self) -> Path:
        return self.folder / f"{self.sha256}-{self.image_size}px.json"

    def store(self, model: bytes, description: dict) -> None:
        """Write the model, then its description (the entry counts only once both are there)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.model_path, model)
            atomic_write_text(self.description_path, json.dumps(
                {"format": FORMAT, "sha256": self.sha256, "image_size": self.image_size, **description}, indent=1))
        except OSError as err:  # a read-only home must not stop the query; it only costs the next export
            log.warning("could not keep the exported ONNX model in %s (%s); it will be exported again next time",
                        self.folder, err)

    def load(self) -> tuple[bytes, dict] | None:
        """(model bytes, description), or None when the entry is missing, partial or of another format."""
        try:
            description = json.loads(self.description_path.read_text())
            model = self.model_path.read_bytes()
        except (OSError, ValueError):
            return None
        if description.get("format") != FORMAT or description.get("sha256") != self.sha256:
            return None
        return model, description

    def open(self, threads: int | None = None):
        """(ONNX Runtime session, description), or None when there is no usable entry: a damaged model
        file is a miss with a warning (the caller exports again and replaces it)."""
        loaded = self.load()
        if loaded is None:
            return None
        try:
            return onnx_session(loaded[0], threads), loaded[1]
        except ImportError:
            raise
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
            log.warning("the cached ONNX model %s could not be opened (%s); exporting again", self.model_path, err)
            return None


def entry_for(sha256: str, image_size: int) -> CacheEntry:
    return CacheEntry(sha256, int(image_size), cache_dir())


def describe(embedding_dim: int, mean: tuple, std: tuple, eval_settings: EvalConfig) -> dict:
    """What ``CachedOnnxEmbedder`` needs besides the network (the checkpoint's test transform and eval keys)."""
    return {"embedding_dim": int(embedding_dim), "transform": {"resize": "square-bilinear", "mean": list(mean),
                                                              "std": list(std)},
            "eval": {"recall_k": list(eval_settings.recall_k), "map_at_r": bool(eval_settings.map_at_r),
                     "batch_size": int(eval_settings.batch_size)}}


class CachedOnnxEmbedder:
    """A cached ONNX model as an embedder: image table → float32 L2-normalised embeddings, no torch.

    The transform is the checkpoint's test transform written out with Pillow and numpy: a square
    bilinear resize (what torchvision's ``Resize`` does on PIL images), scale to [0, 1], ImageNet
    mean/std; tests check the embeddings against the PyTorch path (cosine ≥ 0.9999).
    """

    def __init__(self, entry: CacheEntry, session, description: dict, checkpoint: Path,
                 batch_size: int | None = None, workers: int = 2):
        self.sha256, self.checkpoint = entry.sha256, Path(checkpoint)
        self.image_size = entry.image_size
        self.dim = int(description["embedding_dim"])
        settings = description["eval"]
        self.eval_settings = EvalConfig(recall_k=list(settings["recall_k"]), map_at_r=bool(settings["map_at_r"]),
                                        batch_size=int(settings["batch_size"]))
        transform = description["transform"]
        self.mean = np.asarray(transform["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(transform["std"], np.float32).reshape(3, 1, 1)
        self.batch_size = batch_size or self.eval_settings.batch_size
        self.workers = max(1, workers)
        self.session = session

    def image_array(self, path: str) -> np.ndarray:
        """The test transform of one image file: (3, S, S) float32."""
        from .data.images import load_image, eval_array

        return eval_array(load_image(path), self.image_size, self.mean, self.std)

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        out = self.session.run(["embeddings"], {"images": np.ascontiguousarray(images, np.float32)})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_table(self, table, progress: bool = True) -> np.ndarray:
        """Embeddings (N, D) of the images ``table["path"]`` lists, in order."""
        from .progress import progress as progress_bar

        paths = [str(p) for p in table["path"]]
        chunks = []
        with ThreadPoolExecutor(self.workers) as pool:  # Pillow releases the GIL while decoding
            starts = range(0, len(paths), self.batch_size)
            for start in progress_bar(starts, total=len(starts), desc="embed", unit="batch", disable=not progress):
                batch = list(pool.map(self.image_array, paths[start:start + self.batch_size]))
                chunks.append(self.embed_arrays(np.stack(batch)))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)


def open_cached_embedder(checkpoint: str | Path, image_size: int | None = None, batch_size: int | None = None,
                         workers: int = 2, threads: int | None = None) -> CachedOnnxEmbedder | None:
    """The cached ONNX model of ``checkpoint`` (found by its sha256), or None when it was not exported yet.

    image_size: which export to use; None takes the only one there is (None if there are several).
    """
    path = Path(checkpoint)
    if not path.is_file():
        return None  # the PyTorch path names the missing file
    sha = sha256_file(path)
    if image_size is None:
        found = sorted(cache_dir().glob(f"{sha}-*px.json"))
        if len(found) != 1:
            return None
        image_size = int(found[0].name[len(sha) + 1:-len("px.json")])
    entry = entry_for(sha, image_size)
    try:
        opened = entry.open(threads)
    except ImportError as err:
        raise ConfigError(f"--runtime onnxruntime: {err}") from None
    if opened is None:
        return None
    return CachedOnnxEmbedder(entry, *opened, checkpoint=path, batch_size=batch_size, workers=workers)
