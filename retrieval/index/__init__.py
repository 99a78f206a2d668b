"""The gallery index: FAISS index + metadata table + manifest in one folder (DESIGN.md "Index folder").

``folder`` owns the folder format (files, manifest, reading, writing, checks); ``factory``
turns FAISS factory strings into trained indexes; ``build`` writes or appends to a folder;
``search`` answers top-k queries; ``shards`` builds galleries beyond one machine's memory
(IVF shards merged into on-disk lists) on top of ``folder``.
"""
from .build import REMOVED, build_index, remove_entries
from .factory import MIN_POINTS_PER_CENTROID, check_factory, create_index, set_search_params
from .folder import (EMBEDDINGS_FILE, FORMAT, INDEX_FILE, IVFDATA_FILE, MANIFEST_FILE, METADATA_FILE, check_compatible,
                     check_replaceable, is_index_folder, load_index, new_manifest, normalise_metadata, read_manifest)
from .search import search
from .shards import build_shard, build_sharded_index, merge_shards, train_empty_index

__all__ = [
    "REMOVED", "remove_entries", "EMBEDDINGS_FILE", "FORMAT", "INDEX_FILE", "IVFDATA_FILE", "MANIFEST_FILE", "METADATA_FILE",
    "MIN_POINTS_PER_CENTROID", "build_index", "build_shard", "build_sharded_index", "check_compatible",
    "check_factory", "check_replaceable", "create_index", "is_index_folder", "load_index", "merge_shards", "new_manifest", "normalise_metadata",
    "read_manifest", "search", "set_search_params", "train_empty_index",
]
