"""The gallery index: FAISS index + metadata table + manifest in one folder (DESIGN.md "Index folder").

``folder`` owns the folder format (files, manifest, reading, writing, checks); ``factory``
turns FAISS factory strings into trained indexes; ``build`` writes or appends to a folder;
``search`` answers top-k queries; ``shards`` builds galleries beyond one machine's memory
(IVF shards merged into on-disk lists) on top of ``folder``; ``distributed`` runs that recipe
across the ranks of a ``torchrun`` job.
"""
from .build import REMOVED, build_index, remove_entries
from .factory import MIN_POINTS_PER_CENTROID, check_factory, create_index, set_search_params
from .distributed import build_distributed_index, slice_bounds, work_dir_for
from .folder import (EMBEDDINGS_FILE, FORMAT, INDEX_FILE, IVFDATA_FILE, MANIFEST_FILE, METADATA_FILE, METADATA_PARQUET,
                     check_compatible, metadata_path, read_metadata_rows,
                     check_replaceable, is_index_folder, load_index, new_manifest, normalise_metadata, read_manifest)
from .search import search
from .shards import (build_shard, build_sharded_index, check_shardable, check_shards, merge_shards,
                     train_empty_index, trained_fingerprint)

__all__ = [
    "REMOVED", "remove_entries", "EMBEDDINGS_FILE", "FORMAT", "INDEX_FILE", "IVFDATA_FILE", "MANIFEST_FILE", "METADATA_FILE",
    "MIN_POINTS_PER_CENTROID", "build_index", "build_shard", "build_sharded_index", "check_compatible",
    "check_factory", "check_replaceable", "create_index", "is_index_folder", "load_index", "merge_shards", "new_manifest", "normalise_metadata",
    "read_manifest", "search", "set_search_params", "train_empty_index", "check_shardable", "check_shards",
    "trained_fingerprint", "build_distributed_index", "slice_bounds", "work_dir_for", "METADATA_PARQUET",
    "metadata_path", "read_metadata_rows",
]
