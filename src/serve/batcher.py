"""The dynamic batcher: one thread gathers the images of concurrent requests into one forward pass per model
(:class:`src.serve.backends.ServedModel`). Nothing here knows HTTP or the network."""
from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from src.serve.backends import ServedModel

PEAK_WINDOW_S = 1.0      # how long the batcher remembers how many images were in the server at once


class _Job(NamedTuple):
    model: ServedModel
    image: np.ndarray
    future: concurrent.futures.Future


class Batcher:
    """One thread reads the images of every request: up to ``max_batch`` of one model per forward pass.

    After the first image of a batch it waits up to ``max_wait_ms`` for more, but only while more are
    likely to come: while a request that announced itself (:meth:`expect`) has not yet submitted its
    images, or while the batch holds fewer images than were waiting or being read at once in the last
    second (:data:`PEAK_WINDOW_S`). The second rule keeps clients that wait for their answers from
    splitting into cohorts that take turns with half batches: the cohort just answered is sent back
    within milliseconds and joins the next pass. A lone request is read at once.
    """

    def __init__(self, max_batch: int, max_wait_ms: float):
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._held: List[_Job] = []            # taken from the queue for another model's batch
        self._expected = 0
        self._in_server = 0                    # images submitted and not yet answered
        # (time, images in the server then): times rising, counts falling, so the first is the window's peak
        self._peaks: "collections.deque" = collections.deque()
        self._lock = threading.Lock()
        self._sizes: "collections.Counter[int]" = collections.Counter()   # forward passes by images in them
        self._busy = 0.0                                                   # seconds in forward passes
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def expect(self) -> Callable[[], None]:
        """Announce a request about to submit images; call the returned function if it never does."""
        with self._lock:
            self._expected += 1
        done = threading.Event()

        def cancel() -> None:
            if not done.is_set():
                done.set()
                with self._lock:
                    self._expected -= 1
        return cancel

    def submit(self, model: ServedModel, images: Sequence[np.ndarray],
               announced: Optional[Callable[[], None]] = None) -> List[concurrent.futures.Future]:
        """Queue prepared images; each future gives ``(text, confidence)``."""
        futures = []
        with self._lock:
            self._in_server += len(images)
            self._note_peak(time.monotonic())
        for image in images:
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put(_Job(model, image, future))
            futures.append(future)
        if announced is not None:
            announced()
        return futures

    def _note_peak(self, now: float) -> None:
        """Record the images in the server now; keep only what can still be the peak of the window (lock held)."""
        while self._peaks and self._peaks[-1][1] <= self._in_server:
            self._peaks.pop()
        self._peaks.append((now, self._in_server))

    def _recent_peak(self) -> int:
        """The most images that were in the server at once in the last PEAK_WINDOW_S seconds."""
        with self._lock:
            now = time.monotonic()
            while self._peaks and self._peaks[0][0] < now - PEAK_WINDOW_S:
                self._peaks.popleft()
            return max(self._in_server, self._peaks[0][1] if self._peaks else 0)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self, timeout: Optional[float]) -> Optional[_Job]:
        if self._held:
            return self._held.pop(0)
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _run(self) -> None:
        while True:
            first = self._take(None)
            if first is None:
                return
            batch, held = [first], []
            deadline = time.monotonic() + self.max_wait
            wanted = min(self.max_batch, self._recent_peak())
            while len(batch) < self.max_batch:
                try:
                    job = self._take(0)
                except queue.Empty:
                    with self._lock:
                        waiting = self._expected > 0 or len(batch) < wanted
                    left = deadline - time.monotonic()
                    if not waiting or left <= 0:
                        break
                    try:
                        job = self._take(min(left, 0.001))
                    except queue.Empty:
                        continue
                if job is None:
                    self._queue.put(None)
                    break
                (batch if job.model is first.model else held).append(job)
            self._held = held + self._held
            self._read(batch)

    def stats(self) -> Dict[str, object]:
        """What the batcher has done since it started: forward passes by their image count, images, and the
        seconds spent reading them (the rest of ``uptime_s`` it waited for images)."""
        with self._lock:
            sizes, busy = dict(self._sizes), self._busy
        return {"uptime_s": time.monotonic() - self._started, "forward_passes": sum(sizes.values()),
                "images": sum(size * count for size, count in sizes.items()), "busy_s": busy,
                "batch_sizes": {str(size): sizes[size] for size in sorted(sizes)}}

    def _read(self, batch: List[_Job]) -> None:
        start = time.monotonic()
        try:
            results = batch[0].model.read(np.stack([job.image for job in batch]))
        except Exception as err:  # a failed forward pass fails its requests, not the server
            for job in batch:
                job.future.set_exception(err)
            return
        finally:
            with self._lock:
                self._sizes[len(batch)] += 1
                self._busy += time.monotonic() - start
                self._in_server -= len(batch)
        for job, result in zip(batch, results):
            job.future.set_result(result)

