"""Index folders never lose data: --overwrite replaces only index folders, edits are caught, writers queue."""
import json
import multiprocessing as mp
import os

import numpy as np
import pandas as pd
import pytest

from retrieval.errors import IndexFormatError
from retrieval.files import remove_stale_temporaries, writer_lock
from retrieval.index import MANIFEST_FILE, METADATA_FILE, build_index, check_compatible, load_index, search

EXTRA = {"checkpoint": "a.pt", "checkpoint_sha256": "a" * 64}


def unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def meta(n, start=0):
    return pd.DataFrame({"path": [f"/img/{start + i}.jpg" for i in range(n)], "label": [i % 3 for i in range(n)]})


def test_overwrite_refuses_a_folder_that_is_not_an_index(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("mine")
    with pytest.raises(IndexFormatError, match="not an index folder"):
        build_index(unit(10), meta(10), photos, manifest_extra=EXTRA, overwrite=True)
    assert (photos / "notes.txt").read_text() == "mine" and len(list(photos.iterdir())) == 1


def test_overwrite_refuses_a_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(IndexFormatError, match="is a file"):
        build_index(unit(10), meta(10), target, manifest_extra=EXTRA, overwrite=True)
    assert target.read_text() == "mine"


def test_overwrite_replaces_an_index_folder(tmp_path):
    build_index(unit(10), meta(10), tmp_path / "idx", manifest_extra=EXTRA)
    build_index(unit(7, seed=1), meta(7), tmp_path / "idx", manifest_extra=EXTRA, overwrite=True)
    assert load_index(tmp_path / "idx")[0].ntotal == 7


def test_swapped_metadata_rows_are_refused(tmp_path):
    x = unit(12)
    build_index(x, meta(12), tmp_path / "idx", manifest_extra=EXTRA)
    path = tmp_path / "idx" / METADATA_FILE
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # same count, two rows swapped: would name the wrong image
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IndexFormatError, match=f"{METADATA_FILE}: sha256 .* differs"):
        load_index(tmp_path / "idx")


def test_manifest_without_checkpoint_hash_accepts_no_checkpoint(tmp_path):
    build_index(unit(6), meta(6), tmp_path / "idx", manifest_extra=EXTRA)
    path = tmp_path / "idx" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest["checkpoint_sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="no checkpoint_sha256"):
        check_compatible(manifest, tmp_path / "idx", 8, "b" * 64)


def test_format_1_folder_without_metadata_hash_still_loads(tmp_path, caplog):
    build_index(unit(6), meta(6), tmp_path / "idx", manifest_extra=EXTRA)
    path = tmp_path / "idx" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest["metadata_sha256"]
    path.write_text(json.dumps({**manifest, "format": "retrieval-index/1"}))
    assert load_index(tmp_path / "idx")[0].ntotal == 6
    assert "earlier version" in caplog.text
    path.write_text(json.dumps(manifest))  # a current-format manifest whose hash was removed
    with pytest.raises(IndexFormatError, match="no metadata_sha256"):
        load_index(tmp_path / "idx")


def test_duplicate_paths_in_a_new_build_are_named(tmp_path, caplog):
    table = pd.concat([meta(4), meta(2)], ignore_index=True)
    build_index(unit(6), table, tmp_path / "idx", manifest_extra=EXTRA)
    assert "2 of 6 images are listed more than once" in caplog.text


def _append(folder, seed, start, n):
    build_index(unit(n, seed=seed), meta(n, start), folder, manifest_extra=EXTRA, append=True)


def test_concurrent_appends_lose_nothing(tmp_path):
    folder = tmp_path / "idx"
    build_index(unit(5), meta(5), folder, manifest_extra=EXTRA)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append, args=(folder, seed, 100 * seed, 20)) for seed in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    index, metadata, _ = load_index(folder)
    assert index.ntotal == 5 + 4 * 20 == len(metadata)
    assert set(metadata["path"]) >= {f"/img/{100 * s + i}.jpg" for s in range(1, 5) for i in range(20)}
    _, ids = search(index, unit(20, seed=3), 1)  # every appended vector is at its own row
    assert (metadata["path"].to_numpy()[ids[:, 0]] == [f"/img/{300 + i}.jpg" for i in range(20)]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # each writer removed the lock file it held


def _count(target, times):
    for _ in range(times):
        with writer_lock(target):
            value = int(target.read_text())
            os.sched_yield()
            target.write_text(str(value + 1))


def test_writers_queue_although_each_removes_the_lock_file_it_held(tmp_path):
    """A waiter that locks a file its holder has just removed must not count as holding the lock."""
    target = tmp_path / "counter"
    target.write_text("0")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_count, args=(target, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert int(target.read_text()) == 200 and sorted(p.name for p in tmp_path.iterdir()) == ["counter"]


def test_stale_temporaries_of_dead_processes_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = [folder / f".idx.{dead}.abcd1234.tmp", folder / f".idx.{dead}.efgh5678.old"]
    for path in stale:
        path.mkdir()
    live = folder / f".idx.{os.getpid()}.ijkl9012.tmp"
    live.mkdir()
    keep = [folder / "idx.tmp", folder / ".other.123.abcd1234.tmp", folder / "notes.txt"]
    for path in keep:
        path.write_text("x")
    removed = remove_stale_temporaries(folder, ("idx",))
    assert sorted(removed) == sorted(stale)
    assert live.exists() and all(p.exists() for p in keep)


def test_interrupted_replacement_restores_the_old_folder(tmp_path):
    build_index(unit(6), meta(6), tmp_path / "idx", manifest_extra=EXTRA)
    dead = 2 ** 22 + 12345
    old = tmp_path / f".idx.{dead}.abcd1234.old"
    old.mkdir()
    os.replace(tmp_path / "idx", old / "x")  # killed between replace_dir's two renames
    remove_stale_temporaries(tmp_path, ("idx",))
    assert load_index(tmp_path / "idx")[0].ntotal == 6 and not old.exists()
