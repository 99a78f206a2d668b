"""Atomic writes, writer locks and file hashing: outputs are complete or absent, never half-written.

Temporaries sit beside their target as ``.NAME.<pid>.<random>.tmp`` (folders: ``.tmp`` and,
while an old folder is being replaced, ``.old``), so a crash leaves only names the project
recognises; ``remove_stale_temporaries`` deletes those whose process is gone, and nothing else.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import resource
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import WriteError

log = logging.getLogger(__name__)

# Temporaries of earlier versions had no pid in their name; they count as stale after this long.
LEGACY_STALE_S = 3600.0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Errors of a write that ran out of room: a full disk, a quota, a file-size limit (RLIMIT_FSIZE, the file system's).
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CAUSES = {errno.ENOSPC: f"{os.strerror(errno.ENOSPC)} (free some space or choose another output folder)",
           errno.EDQUOT: f"{os.strerror(errno.EDQUOT)} (free some space or choose another output folder)",
           errno.EFBIG: f"{os.strerror(errno.EFBIG)} (the file-size limit, ulimit -f, or the file system's)"}


def _size_limit() -> str:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "" if limit == resource.RLIM_INFINITY else f": this process may write files of at most {limit:,} bytes"


def _likely_cause(folder: Path) -> str:
    """Why a write that reported no errno (torch.save) probably failed: a size limit or a full disk."""
    if _size_limit():
        return _CAUSES[errno.EFBIG] + _size_limit()
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < (64 << 20):
            return _CAUSES[errno.ENOSPC]
    return "the write failed (a full disk or a file-size limit?)"


def write_error(path: str | Path, err: BaseException) -> WriteError:
    """The WriteError naming ``path`` for a failed write (an OSError of FULL_ERRNOS, or torch's RuntimeError)."""
    path = Path(path)
    if isinstance(err, OSError) and err.errno in _CAUSES:
        return WriteError(path, _CAUSES[err.errno] + (_size_limit() if err.errno == errno.EFBIG else ""))
    detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return WriteError(path, f"{_likely_cause(path.parent)} ({detail})")


def _in_target(tmp: Path, path: Path, err: OSError | WriteError) -> Path:
    """The file of the target folder ``path`` that a failed write into its temporary folder ``tmp`` was making."""
    failed = Path(err.path if isinstance(err, WriteError) else (err.filename or tmp))
    with contextlib.suppress(ValueError):
        return path / failed.relative_to(tmp)
    return path


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise write_error(path, err) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_dir(new: Path, path: Path) -> None:
    """Move the complete folder ``new`` onto ``path``; an existing ``path`` is replaced only now.

    A crash in between leaves the old folder (renamed to a ``.old`` temporary beside it) or the
    new one, never a mix.
    """
    _fsync_dir(new)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
        os.replace(path, old / "x")
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(old / "x", path)  # the second rename failed: put the old folder back
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)
    _fsync_dir(path.parent)


def staging_dir(path: str | Path) -> Path:
    """A new empty temporary folder beside ``path`` (to be moved onto it with ``replace_dir``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success move it into place.

    With ``overwrite`` an existing folder is replaced only after the new one is complete:
    a crash leaves the old folder or the new one, never a mix. Callers decide what may be
    replaced (an index folder only replaces an index folder).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite to replace it")
    tmp = staging_dir(path)
    try:
        yield tmp
        replace_dir(tmp, path)
    except WriteError as err:
        raise WriteError(_in_target(tmp, path, err), err.cause) from err
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise write_error(_in_target(tmp, path, err), err) from err
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.(?:tmp|old)$")


def is_temporary(name: str, targets: tuple[str, ...]) -> bool:
    """True for the name of a temporary this module makes for one of ``targets``."""
    match = _TEMP.match(name)
    return match is not None and match["name"] in targets


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporaries of the targets ``names`` in ``folder`` left by processes that are gone.

    Returns what was removed. A temporary of a running process, or a legacy one (no pid in its
    name) younger than LEGACY_STALE_S, is kept; files of other names are never touched.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if match is None or match["name"] not in names:
            continue
        pid = match["pid"]
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        if pid is None and time.time() - entry.lstat().st_mtime < LEGACY_STALE_S:
            continue
        target = folder / match["name"]
        if entry.name.endswith(".old") and (entry / "x").exists() and not target.exists():
            # killed between the two renames of replace_dir: the old folder is the only copy
            os.replace(entry / "x", target)
            log.warning("restored %s from %s (a replacement was interrupted)", target, entry.name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d stale temporar%s in %s: %s", len(removed), "y" if len(removed) == 1 else "ies",
                 folder, ", ".join(p.name for p in removed[:5]))
    return removed


_local = threading.local()


def _held_locks() -> set:
    if not hasattr(_local, "held"):
        _local.held = set()
    return _local.held


@contextmanager
def _holding(held: set, key: str) -> Iterator[None]:
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)


def _is_current(fh, lock: Path) -> bool:
    """Whether the open lock file ``fh`` is still the file at ``lock`` (a holder removes it when it lets go)."""
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return False
    fs = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (fs.st_dev, fs.st_ino)


def _acquire(lock: Path, path: Path, what: str):
    """An open lock file at ``lock`` this process holds ``flock``'d; waits for another writer."""
    warned = False
    while True:
        fh = open(lock, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not warned:
                    log.warning("%s: waiting for another %s to finish", path, what)
                    warned = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            if _is_current(fh, lock):
                return fh
        except BaseException:
            fh.close()
            raise
        fh.close()  # locked a file the previous holder had already removed: lock the new one


@contextmanager
def writer_lock(path: str | Path, what: str = "writer") -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``.NAME.lock`` beside ``path`` (waits for another writer).

    The lock file sits beside the target, not inside it, because writers replace the whole
    folder: a lock inside would vanish with the old folder. The holder removes it before letting
    go, so no lock file stays beside a finished folder; a waiter that then locks the removed file
    sees it is no longer the one at that name and locks the new one. Readers take no lock; they
    see the old folder or the new one. Re-entrant within one thread: flock locks belong to an
    open file, so a second open in the same process would otherwise wait for itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    key = os.path.abspath(lock)
    held = _held_locks()
    if key in held:  # re-entered by the thread holding it (the service locks around build_index's own lock)
        yield
        return
    fh = _acquire(lock, path, what)
    with fh, _holding(held, key):
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()
