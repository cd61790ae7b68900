"""The micro-batcher: concurrent requests -> fair, bounded model calls, one at a time.

::

    submit(items, costs) --+-- small request --> small queue (FIFO, whole requests) ---+
                           |                                                           +--> one model call
                           +-- large request --> large queue (round-robin slices) -----+    (worker thread)

Concurrent requests are collected for up to ``max_wait_ms`` and run as one model call. Every
call holds at most ``max_batch_size`` items and ``max_batch_cost`` cost (characters for texts,
pixels for images), so no request can hold the model for long:

* A *small* request (at most half a call's items and a quarter of its cost) joins a call whole.
* A request submitted with ``alone=True`` (the server's choice for a client whose input failed in
  the model recently) runs in calls of its own, so it cannot make other requests' calls fail.
* A *large* request is cut into slices that take turns with the other large requests. While
  small requests are arriving, large work gets ``large_share`` of the model's time (a debt in
  seconds is repaid by small calls) and its slices are sized to last about as long as a small
  call, so a small request waits behind at most one short slice. When no small request has
  arrived for a second, slices grow to a whole call.

A call that fails is split in halves until the input that fails alone is found (bisection): that
request gets :class:`ItemFailedError`, the rows of every other item are delivered, and an input
that failed is remembered so that sending it again costs no model call. A request whose caller
stops waiting (``asyncio`` cancellation, e.g. a client that disconnected) leaves the queue at
once: its items that have not reached the model never will.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

_EWMA = 0.3  # weight of the newest observation in the running estimates of call durations
_SMALL_ACTIVE_S = 1.0  # small traffic counts as "arriving" this long after the last small request
_SMALL_GRACE_S = 0.02  # how long a large slice that has had its share waits for a small request


class QueueFullError(RuntimeError):
    """Too many inputs are already waiting for the model; ``retry_after`` estimates when to retry (s)."""

    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(
            f"The server is busy: {waiting} inputs are waiting for the model (limit {limit}). "
            f"Retry in about {retry_after} s."
        )
        self.waiting = waiting
        self.limit = limit
        self.retry_after = retry_after


class ItemFailedError(Exception):
    """One input of a request failed in the model when run alone.

    Attributes
    ----------
    index : int
        Position of the input in its request.
    error : BaseException
        What the model raised for that input alone.
    isolated : bool
        True when the model worked on other inputs of the same call (or on the call before):
        the failure belongs to this input, not to a broken model.
    """

    def __init__(self, index: int, error: BaseException, isolated: bool):
        super().__init__(f"input {index} failed in the model: {type(error).__name__}: {error}")
        self.index = index
        self.error = error
        self.isolated = isolated


@dataclass
class BatchStats:
    """Counters of one :class:`MicroBatcher`."""

    requests: int = 0
    items: int = 0
    model_calls: int = 0
    fallback_batches: int = 0  # calls that failed and were split to find the failing input
    largest_batch: int = 0
    large_requests: int = 0  # requests served in slices
    alone_requests: int = 0  # requests run in calls of their own
    failed_items: int = 0
    known_bad_items: int = 0  # refused without a model call: the same input failed before
    cancelled_requests: int = 0
    skipped_items: int = 0  # items of cancelled requests that never reached the model
    rejected_requests: int = 0  # queue full


class _Request:
    __slots__ = (
        "items",
        "costs",
        "future",
        "next",
        "rows",
        "remaining",
        "large",
        "done",
        "template",
        "arrived",
        "alone",
    )

    def __init__(self, items: list, costs: list, future: asyncio.Future, large: bool, arrived: float, alone: bool):
        self.items = items
        self.alone = alone
        self.arrived = arrived
        self.costs = costs
        self.future = future
        self.next = 0  # first item not yet handed to the model
        self.rows: list = [None] * len(items)
        self.remaining = len(items)  # items without a row yet
        self.large = large
        self.done = False
        self.template = None  # first model output seen: how to assemble the rows


def _digest(item) -> bytes | None:
    if isinstance(item, str):
        data = item.encode("utf-8", "surrogatepass")
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    else:
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


def _assemble(rows: list, template):
    if isinstance(template, np.ndarray):
        return np.stack(rows) if template.ndim > 1 else np.array(rows)
    return list(rows)


class MicroBatcher:
    """Collect concurrent requests into fair, bounded calls of ``run``; hand each its rows.

    Parameters
    ----------
    run : callable
        Takes a list of items and returns an array or list with one row per item, in order.
        Rows must not depend on which other items share the call (true of scikit-learn
        pipelines' ``predict``, ``predict_proba`` and ``transform``).
    executor : concurrent.futures.Executor
        Where ``run`` executes; a single thread keeps model calls from competing for the cores.
    max_batch_size : int
        Most items per call; 1 turns batching off.
    max_wait_ms : float
        How long a call waits for more small requests once it has one.
    max_batch_cost : float, default=None
        Most cost per call (see ``padded_cost``); None: no limit but ``max_batch_size``.
    padded_cost : bool, default=False
        True: a call costs ``n_items * largest item cost`` (texts: a forward pass pads every text
        to the longest). False: the sum of the item costs (images: decoding work).
    max_queue : int, default=None
        Most items waiting for the model; a request beyond gets :class:`QueueFullError`.
    large_share : float, default=0.25
        Share of the model's time that large requests get while small requests keep arriving.
    remember_failures : int, default=1024
        How many failing inputs to remember (refused again without a model call).
    on_call : callable, default=None
        ``on_call(n_items, cost, seconds, ok)`` after each model call (metrics).
    """

    def __init__(
        self,
        run: Callable[[list], Any],
        executor,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_batch_cost: float | None = None,
        padded_cost: bool = False,
        max_queue: int | None = None,
        large_share: float = 0.25,
        remember_failures: int = 1024,
        on_call: Callable | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}.")
        if max_batch_cost is not None and not max_batch_cost > 0:
            raise ValueError(f"max_batch_cost must be > 0 or None, got {max_batch_cost}.")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 or None, got {max_queue}.")
        if not 0 < large_share < 1:
            raise ValueError(f"large_share must lie strictly between 0 and 1, got {large_share}.")
        self.run = run
        self.executor = executor
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.max_batch_cost = None if max_batch_cost is None else float(max_batch_cost)
        self.padded_cost = bool(padded_cost)
        self.max_queue = None if max_queue is None else int(max_queue)
        self.large_share = float(large_share)
        self.remember_failures = int(remember_failures)
        self.on_call = on_call
        self.stats = BatchStats()
        self._small: collections.deque = collections.deque()
        self._large: collections.deque = collections.deque()
        self._waiting = 0  # items not yet handed to the model
        self._small_waiting = 0
        self._known_bad: collections.OrderedDict = collections.OrderedDict()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_flight: list = []
        # Scheduling state: seconds of model time large work owes small work, and running estimates.
        self._debt = 0.0
        self._last_small_arrival = -math.inf
        self._small_call_s: float | None = None
        self._large_s_per_cost: float | None = None
        self._s_per_item: float | None = None
        self._healthy = False  # the last call that was not a retry succeeded

    # ------------------------------------------------------------------ public
    @property
    def waiting_items(self) -> int:
        """Items waiting for the model (not counting the call in progress)."""
        return self._waiting

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for req in [*self._small, *self._large, *self._in_flight]:
            if not req.done:
                req.done = True
                if not req.future.done():
                    req.future.set_exception(RuntimeError("The server is shutting down."))
        self._small.clear()
        self._large.clear()

    async def submit(self, items: list, costs: list | None = None, *, alone: bool = False):
        """Queue ``items`` (already validated) and wait for their rows.

        Parameters
        ----------
        items : list
        costs : list of float, default=None
            Cost of each item (characters, pixels); None: 1 each.
        alone : bool, default=False
            Run this request's items in calls of their own, never with other requests'.

        Returns
        -------
        ndarray or list
            One row per item, in order.

        Raises
        ------
        QueueFullError
            Too many items are waiting already.
        ItemFailedError
            An item failed in the model when run alone (now or in an earlier request).
        """
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() has not been called.")
        items = list(items)
        costs = [1.0] * len(items) if costs is None else [float(c) for c in costs]
        if len(costs) != len(items):
            raise ValueError(f"Got {len(costs)} costs for {len(items)} items.")
        if not items:
            return []
        self._refuse_known_failures(items)
        if self.max_queue is not None and self._waiting + len(items) > self.max_queue:
            self.stats.rejected_requests += 1
            raise QueueFullError(self._waiting, self.max_queue, self.retry_after())
        loop = asyncio.get_running_loop()
        req = _Request(items, costs, loop.create_future(), self._is_large(costs), loop.time(), bool(alone))
        self.stats.requests += 1
        self.stats.alone_requests += req.alone
        self.stats.items += len(items)
        self._waiting += len(items)
        if req.large:
            self.stats.large_requests += 1
            self._large.append(req)
        else:
            self._small.append(req)
            self._small_waiting += len(items)
            self._last_small_arrival = req.arrived
        self._wakeup.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            if not req.done:
                self._withdraw(req, cancelled=True)
            raise

    def retry_after(self) -> int:
        """Seconds until the current queue has probably drained (1 to 60)."""
        per_item = self._s_per_item if self._s_per_item is not None else 0.05
        return int(min(60, max(1, math.ceil(self._waiting * per_item))))

    # ------------------------------------------------------------------ bookkeeping
    def _call_cost(self, costs: list) -> float:
        if not costs:
            return 0.0
        return len(costs) * max(costs) if self.padded_cost else float(sum(costs))

    def _fits(self, costs: list) -> bool:
        return self.max_batch_cost is None or self._call_cost(costs) <= self.max_batch_cost

    def _is_large(self, costs: list) -> bool:
        if len(costs) > max(1, self.max_batch_size // 2):
            return True
        return self.max_batch_cost is not None and self._call_cost(costs) > self.max_batch_cost / 4

    def _refuse_known_failures(self, items: list) -> None:
        if not self._known_bad:
            return
        for i, item in enumerate(items):
            key = _digest(item)
            if key is not None and key in self._known_bad:
                self._known_bad.move_to_end(key)
                self.stats.known_bad_items += 1
                raise ItemFailedError(i, self._known_bad[key], isolated=True)

    def _remember_failure(self, item, error: BaseException) -> None:
        key = _digest(item)
        if key is None or self.remember_failures <= 0:
            return
        self._known_bad[key] = error
        while len(self._known_bad) > self.remember_failures:
            self._known_bad.popitem(last=False)

    def _withdraw(self, req: _Request, *, cancelled: bool) -> None:
        """Take ``req``'s unscheduled items out of the queues (cancelled or failed)."""
        req.done = True
        unscheduled = len(req.items) - req.next
        if unscheduled:
            queue = self._large if req.large else self._small
            try:
                queue.remove(req)
            except ValueError:
                pass
            self._waiting -= unscheduled
            if not req.large:
                self._small_waiting -= unscheduled
            req.next = len(req.items)
        if cancelled:
            self.stats.cancelled_requests += 1
            self.stats.skipped_items += unscheduled

    # ------------------------------------------------------------------ choosing the next call
    async def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        # An Event rather than Queue.get under wait_for: a timed-out wait can never lose a request.
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not predicate():
            self._wakeup.clear()
            if end is None:
                await self._wakeup.wait()
                continue
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return predicate()
        return True

    def _small_active(self, now: float) -> bool:
        return bool(self._small) or now - self._last_small_arrival < _SMALL_ACTIVE_S

    def _take_small(self) -> list:
        picks: list = []
        costs: list = []
        passed: list = []  # requests that run alone, left at the front for the next call
        while self._small:
            req = self._small[0]
            n = len(req.items)
            if req.alone and picks:
                passed.append(self._small.popleft())
                continue
            if picks and (len(picks) + n > self.max_batch_size or not self._fits(costs + req.costs)):
                break
            self._small.popleft()
            picks += [(req, i) for i in range(n)]
            costs += req.costs
            req.next = n
            self._waiting -= n
            self._small_waiting -= n
            if req.alone:
                break
        self._small.extendleft(reversed(passed))
        return picks

    def _slice_budget(self, now: float) -> float:
        cap = self.max_batch_cost if self.max_batch_cost is not None else float(self.max_batch_size)
        if not self._small_active(now):
            return cap
        if self._small_call_s is not None and self._large_s_per_cost:
            return min(cap, self._small_call_s / self._large_s_per_cost)
        return cap / 4

    def _take_large(self, budget: float) -> list:
        picks: list = []
        costs: list = []
        unit = self.max_batch_cost is None  # without a cost limit the budget counts items
        full = False
        while self._large and not full:
            req = self._large[0]
            if req.alone and picks:
                break
            full = req.alone  # its slice runs alone
            took = 0
            while req.next < len(req.items):
                if len(picks) >= self.max_batch_size:
                    full = True
                    break
                trial = costs + [req.costs[req.next]]
                spent = len(trial) if unit else self._call_cost(trial)
                if picks and (spent > budget or not self._fits(trial)):
                    full = True
                    break
                picks.append((req, req.next))
                costs.append(req.costs[req.next])
                req.next += 1
                self._waiting -= 1
                took += 1
            if req.next >= len(req.items):
                self._large.popleft()
            elif took:
                self._large.rotate(-1)  # its next slice waits for the other large requests' turns
        return picks

    async def _next_call(self) -> tuple:
        loop = asyncio.get_running_loop()
        await self._wait_for(lambda: bool(self._small or self._large), None)
        if self._small:
            # The batching window: wait for more small requests, up to max_wait_ms after the oldest.
            window_end = self._small[0].arrived + self.max_wait_s
            await self._wait_for(lambda: self._small_waiting >= self.max_batch_size, max(0.0, window_end - loop.time()))
        now = loop.time()
        if self._small and (not self._large or self._debt > 0):
            return self._take_small(), False
        if not self._large:
            return [], False
        if not self._small and self._debt > 0 and self._small_active(now):
            # Large work has had its share; small clients are probably about to send their next request.
            if await self._wait_for(lambda: bool(self._small), _SMALL_GRACE_S):
                return self._take_small(), False
            if not self._large:
                return [], False
        return self._take_large(self._slice_budget(loop.time())), True

    # ------------------------------------------------------------------ running calls
    async def _collect_forever(self) -> None:
        while True:
            picks, large = await self._next_call()
            picks = [p for p in picks if not p[0].done]  # clients that gave up in the meantime
            if not picks:
                continue
            requests = list({id(req): req for req, _ in picks}.values())
            self._in_flight = requests
            try:
                await self._run_picks(picks, large)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the loop serving others
                for req in requests:
                    if not req.done:
                        req.done = True
                        if not req.future.done():
                            req.future.set_exception(exc)
            finally:
                self._in_flight = []

    async def _call(self, picks: list):
        items = [req.items[i] for req, i in picks]
        self.stats.model_calls += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        ok = False
        try:
            out = await loop.run_in_executor(self.executor, self.run, items)
            if len(out) != len(items):
                raise RuntimeError(f"The model returned {len(out)} rows for {len(items)} inputs.")
            ok = True
            return out
        finally:
            seconds = time.perf_counter() - start
            if ok:
                per_item = seconds / len(items)
                self._s_per_item = (
                    per_item if self._s_per_item is None else (_EWMA * per_item + (1 - _EWMA) * self._s_per_item)
                )
            if self.on_call is not None:
                self.on_call(len(items), self._call_cost([req.costs[i] for req, i in picks]), seconds, ok)

    async def _run_picks(self, picks: list, large: bool) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            out = await self._call(picks)
        except Exception as exc:  # noqa: BLE001 - isolated below, handed to the requests
            healthy_before, self._healthy = self._healthy, False
            self.stats.fallback_batches += len(picks) > 1
            await self._isolate(picks, exc, healthy_before)
            return
        self._healthy = True
        self._account(large, loop.time() - start, picks)
        self._deliver(picks, out)

    def _account(self, large: bool, seconds: float, picks: list) -> None:
        now = asyncio.get_running_loop().time()
        if large:
            cost = self._call_cost([req.costs[i] for req, i in picks]) if self.max_batch_cost else len(picks)
            if cost > 0:
                per_cost = seconds / cost
                self._large_s_per_cost = (
                    per_cost
                    if self._large_s_per_cost is None
                    else (_EWMA * per_cost + (1 - _EWMA) * self._large_s_per_cost)
                )
            self._debt = self._debt + seconds if self._small_active(now) else 0.0
        else:
            self._small_call_s = (
                seconds if self._small_call_s is None else (_EWMA * seconds + (1 - _EWMA) * self._small_call_s)
            )
            if self._large:
                self._debt = max(0.0, self._debt - seconds * self.large_share / (1 - self.large_share))

    def _deliver(self, picks: list, out) -> None:
        for j, (req, i) in enumerate(picks):
            if req.done:
                continue
            if req.template is None:
                req.template = out
            req.rows[i] = out[j]
            req.remaining -= 1
            if req.remaining == 0:
                req.done = True
                if not req.future.done():
                    req.future.set_result(_assemble(req.rows, req.template))

    async def _isolate(self, picks: list, error: BaseException, healthy_before: bool) -> None:
        """Bisect a failed call: deliver the rows of the halves that work, fail the inputs that fail alone."""
        worked = False
        failed: list = []

        async def split(group: list, exc: BaseException) -> None:
            nonlocal worked
            if len(group) == 1:
                failed.append((group[0], exc))
                return
            mid = len(group) // 2
            for half in (group[:mid], group[mid:]):
                half = [p for p in half if not p[0].done]  # a request that already failed needs no more rows
                if not half:
                    continue
                try:
                    out = await self._call(half)
                except Exception as half_exc:  # noqa: BLE001 - split further
                    await split(half, half_exc)
                else:
                    worked = True
                    self._deliver(half, out)

        await split(picks, error)
        if worked:
            self._healthy = True
        for (req, i), exc in failed:
            if req.done:
                continue
            isolated = worked or healthy_before
            self.stats.failed_items += 1
            if isolated:
                self._remember_failure(req.items[i], exc)
            self._withdraw(req, cancelled=False)
            if not req.future.done():
                req.future.set_exception(ItemFailedError(i, exc, isolated))
