"""Concurrent single queries answered together: one pass over the catalogue's vectors for many queries.

A search over a big catalogue is memory-bound: each query reads the whole matrix (100 MB at 100k x 256), so
eight requests at once read it eight times. Here the first query that finds nobody searching becomes the
leader and answers every query waiting for the same index in one batch (one matrix product), then hands the
lead to the next waiting query, if any. Nobody waits for a batch to fill: alone, a query is answered at once,
as before; under load, queries that arrive while a batch runs go together in the next one. Results do not change:
the exact back end's results do not depend on the batch a query was answered in, and a batch asks for the largest
k of its queries and gives each its own first k (same order: score, then catalogue row).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mildnet.search.searcher import Hit

__all__ = ["QueryBatcher"]


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(eq=False)
class _Slot:
    index: Any
    vector: np.ndarray
    k: int
    exclude: Sequence[str] | None
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False
    hits: list[Hit] | None = None
    error: Exception | None = None

    def result(self) -> list[Hit]:
        if self.error is not None:
            raise self.error
        return self.hits


class QueryBatcher:
    """Answers ``index.query(vector, k, exclude_ids)`` for one vector at a time, batching concurrent callers.

    ``max_batch``: most queries in one pass (their scores take ``max_batch x N`` floats); ``passes``: passes run at
    once (default: the CPUs this process may use, so a batch on one core does not leave the other idle).
    Thread-safe; holds no thread of its own."""

    def __init__(self, max_batch: int = 32, passes: int | None = None) -> None:
        passes = _cpus() if passes is None else passes
        for name, value in (("max_batch", max_batch), ("passes", passes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_batch = max_batch
        self.passes = passes
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._running = 0

    def query(self, index, vector: np.ndarray, k: int, exclude: Sequence[str] | None = None) -> list[Hit]:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape != (index.embeddings.dim,) or not np.isfinite(vector).all():
            # The index says what is wrong with it; a bad vector must not fail the others' batch.
            return index.query(vector, k=k, exclude_ids=exclude)[0]
        slot = _Slot(index, vector, k, list(exclude) if exclude is not None else None)
        with self._lock:
            self._waiting.append(slot)
            lead = self._running < self.passes
            if lead:
                self._running += 1
        if not lead:
            slot.ready.wait()
            if not slot.lead:
                return slot.result()
        self._lead(slot)
        return slot.result()

    def _lead(self, own: _Slot) -> None:
        with self._lock:
            # A query handed the lead of another pass answers itself: never take it into this batch.
            batch = [own] + [s for s in self._waiting
                             if s.index is own.index and s is not own and not s.lead][: self.max_batch - 1]
            taken = set(map(id, batch))
            self._waiting = [s for s in self._waiting if id(s) not in taken]
        try:
            self._answer(batch)
        finally:
            with self._lock:
                following = next((s for s in self._waiting if not s.lead), None)
                if following is not None:
                    following.lead = True  # this pass goes on in the next waiting query's thread
                    following.ready.set()
                else:
                    self._running -= 1

    @staticmethod
    def _answer(batch: list[_Slot]) -> None:
        k = max(s.k for s in batch)
        try:
            found = batch[0].index.query(np.stack([s.vector for s in batch]), k=k,
                                         exclude_ids=[s.exclude for s in batch])
        except Exception as exc:  # every query of the batch gets the error, each in its own thread
            for s in batch:
                s.error = exc
        else:
            for s, hits in zip(batch, found):
                s.hits = hits[: s.k]
        for s in batch:
            s.ready.set()
