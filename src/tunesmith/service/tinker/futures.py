"""The Tinker API's futures: a call that does work answers at once with a request id, and the
client polls `retrieve_future` until the result is there ("try again" until then).

A result is JSON (a dict) or protobuf bytes with a JSON fallback; a failure is an error message
and whether it was the caller's fault (`user`) or the server's. Results are kept until retrieved
and for a while after (a client may poll twice), and belong to the tenant that made the call.
A poll waits on the event loop (no thread held), so any number of clients can poll at once.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

KEEP_S = 3600.0  # a finished result no one retrieved is dropped after this long


@dataclass
class Outcome:
    json: dict | None = None  # the result as JSON
    proto: bytes | None = None  # the same result as protobuf, for a client that accepts it
    error: str | None = None
    category: str = "user"  # "user": the request was wrong; "server": it failed here


@dataclass
class _Future:
    tenant: str
    model_id: str | None
    outcome: Outcome | None = None
    finished_at: float | None = None
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


class Futures:
    def __init__(self):
        self._items: dict[str, _Future] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def create(self, tenant: str, model_id: str | None = None) -> str:
        request_id = f"req-{next(self._counter)}-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._drop_old()
            self._items[request_id] = _Future(tenant, model_id)
        return request_id

    def finish(self, request_id: str, outcome: Outcome) -> None:
        with self._lock:
            item = self._items.get(request_id)
            if item is None:
                return
            item.outcome, item.finished_at = outcome, time.monotonic()
            waiters = list(item.waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, request_id: str, tenant: str, wait_s: float) -> tuple[bool, Outcome | None]:
        """(known to this tenant, the outcome or None while it runs), after up to `wait_s` for it."""
        with self._lock:
            item = self._items.get(request_id)
            if item is None or item.tenant != tenant:
                return False, None
            if item.outcome is not None:
                return True, item.outcome
            waiter = (asyncio.get_running_loop(), asyncio.Event())
            item.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), wait_s)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                item.waiters.remove(waiter)
        return True, item.outcome

    def _drop_old(self) -> None:
        cutoff = time.monotonic() - KEEP_S
        for key in [k for k, v in self._items.items() if v.finished_at is not None and v.finished_at < cutoff]:
            del self._items[key]
