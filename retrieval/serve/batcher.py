"""Micro-batching: concurrent requests' images go through the network in one forward pass.

Each request submits its preprocessed images and waits on a future; one worker thread takes
the first waiting item, gathers more for at most ``max_wait_ms`` (or until ``max_batch``),
runs the model once on the stack and hands every request its rows. Under load the forward
pass — the expensive part of a query — runs once per batch instead of once per request.
With ``max_wait_ms=0`` (the service's default) nothing waits: a batch is what queued while
the previous pass ran, so a lone request pays no delay (continuous batching).

``call(fn)`` runs any other function on the same thread, between forward passes: the service
sends all its PyTorch work there (loading the model, explanations, attention maps). One thread
then owns PyTorch's one OpenMP team. Each thread that runs a parallel region gets a team of its
own, and once a process's OpenMP threads outnumber the CPUs, libgomp stops letting idle workers
spin and puts them to sleep after ~100 spins (``do_spin`` in libgomp's ``config/linux/wait.h``):
every parallel region of a forward pass then starts by waking them with a futex, which made the
server's forward pass 25–30 % slower than the same pass in a one-threaded process
(RESULTS.md, "retrieval-serve: where the forward pass lost its time").
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """A function to run on the batcher's thread (``MicroBatcher.call``)."""
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    future: Future

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn(*self.args, **self.kwargs))
        except Exception as err:  # noqa: BLE001 — the caller gets it; the thread goes on
            self.future.set_exception(err)


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

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        """A future of ``fn(*args, **kwargs)``, run on the batcher's thread after the forward pass in progress."""
        future: Future = Future()
        self._queue.put(_Call(fn, args, kwargs, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first, calls: list[_Call]) -> list:
        """The batch that starts with ``first``; calls met while gathering go to ``calls`` (run after it)."""
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
            if isinstance(item, _Call):
                calls.append(item)
                continue
            items.append(item)
            count += len(item[0])
        return items

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, _Call):
                first.run()
                continue
            calls: list[_Call] = []
            self._forward(self._gather(first, calls))
            for call in calls:
                call.run()

    def _forward(self, items: list) -> None:
        """One forward pass over the gathered requests; each future gets its rows (or the error)."""
        start = time.perf_counter()
        try:
            out = self.fn(torch.cat([images for images, _ in items]))
        except Exception as err:  # every waiting request gets the error, the thread goes on
            for _, future in items:
                future.set_exception(err)
            return
        self.batches += 1
        forward_ms = 1000 * (time.perf_counter() - start)
        row = 0
        for images, future in items:
            future.forward_ms = forward_ms  # read by the route's Server-Timing (serve/timing.py)
            future.set_result(out[row:row + len(images)])
            row += len(images)
        self.items += row
