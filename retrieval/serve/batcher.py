"""Micro-batching: concurrent requests' images go through the network in one forward pass.

Each request submits its preprocessed images and waits on a future; one worker thread takes
the first waiting item, gathers more for at most ``max_wait_ms`` (or until ``max_batch``),
runs the model once on the stack and hands every request its rows. Under load the forward
pass — the expensive part of a query — runs once per batch instead of once per request.
With ``max_wait_ms=0`` (the service's default) nothing waits: a batch is what queued while
the previous pass ran, so a lone request pays no delay (continuous batching).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class MicroBatcher:
    """Batches ``fn`` calls: fn(images (B, 3, H, W)) → embeddings (B, D) numpy, called from one thread."""

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], max_batch: int = 32, max_wait_ms: float = 0.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch >= 1 and max_wait_ms >= 0 expected, got {max_batch}, {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0  # forward passes run
        self.items = 0  # images embedded
        self._thread = threading.Thread(target=self._loop, name="retrieval-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: torch.Tensor) -> Future:
        """images (n, 3, H, W) → a future of their embeddings (n, D)."""
        future: Future = Future()
        self._queue.put((images, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first) -> list:
        items, count = [first], len(first[0])
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # close() while gathering: finish this batch, then stop
                self._queue.put(None)
                break
            items.append(item)
            count += len(item[0])
        return items

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = self._gather(first)
            start = time.perf_counter()
            try:
                out = self.fn(torch.cat([images for images, _ in items]))
            except Exception as err:  # every waiting request gets the error, the thread goes on
                for _, future in items:
                    future.set_exception(err)
                continue
            self.batches += 1
            forward_ms = 1000 * (time.perf_counter() - start)
            row = 0
            for images, future in items:
                future.forward_ms = forward_ms  # read by the route's Server-Timing (serve/timing.py)
                future.set_result(out[row:row + len(images)])
                row += len(images)
            self.items += row
