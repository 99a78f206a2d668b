"""Progress bars for loops a person waits for; the command line turns them off with --quiet."""
from __future__ import annotations

from tqdm.auto import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    """Show (True) or hide (False) every progress bar of the library."""
    global _enabled
    _enabled = enabled


def progress(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """``tqdm`` that is silent when bars are switched off or ``disable`` is true."""
    return tqdm(iterable, disable=disable or not _enabled, dynamic_ncols=True, **kwargs)
