"""Each training model's calls run one at a time in the order the client numbered them.

The `tinker` client numbers a training client's calls 1, 2, 3, ... (`seq_id`) and may send them
over several connections at once, so they can arrive out of order; a call waits here until every
lower number has run. A number sent twice (the client retrying a call whose answer it lost) gets
the first call's request id back, not a second run. One lock shared by all models keeps two
models' steps from splitting the machine's cores between them.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable

from tunesmith.errors import UserError


class OrderedWorker:
    def __init__(self, name: str, compute: threading.Lock):
        self.name, self.compute = name, compute
        self.next_seq = 1
        self._heap: list[tuple[float, int, str, Callable[[], None]]] = []
        self._given: dict[int, str] = {}  # seq_id -> the request id it got
        self._cond = threading.Condition()
        self._closed = False
        self._tie = 0
        self._thread = threading.Thread(target=self._run, name=f"tinker-{name}", daemon=True)
        self._thread.start()

    def submit(self, seq_id: int | None, request_id: str, job: Callable[[], None]) -> str:
        """Queue `job` as call `seq_id` (None: after whatever is queued now); returns the request
        id that answers it (an earlier one if this seq_id was already sent)."""
        with self._cond:
            if self._closed:
                raise UserError(f"model {self.name} was unloaded")
            if seq_id is not None:
                if seq_id in self._given:
                    return self._given[seq_id]
                if seq_id < self.next_seq:
                    raise UserError(f"seq_id {seq_id}: calls up to {self.next_seq - 1} of model {self.name} have run")
                self._given[seq_id] = request_id
                key = seq_id
            else:
                key = max([self.next_seq - 1, *(k for k, _, _, _ in self._heap)]) + 0.5  # type: ignore[assignment]
            self._tie += 1
            heapq.heappush(self._heap, (key, self._tie, request_id, job))
            self._cond.notify()
        return request_id

    def _ready(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= self.next_seq

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._ready():
                    self._cond.wait()
                if self._closed:
                    return
                key, _, _, job = heapq.heappop(self._heap)
                if key == self.next_seq:
                    self.next_seq += 1
                    for old in [k for k in self._given if k < self.next_seq - 64]:
                        del self._given[old]
            with self.compute:
                job()

    def close(self) -> list[str]:
        """Stop after the call running now; returns the request ids of the calls that will not run."""
        with self._cond:
            self._closed = True
            dropped = [request_id for _, _, request_id, _ in self._heap]
            self._heap.clear()
            self._cond.notify()
        return dropped
