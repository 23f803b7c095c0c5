"""Live CPU bytes over time without CUDA: torch's CPU allocator reports every allocation and
free to the profiler when ``profile_memory`` is on (c10's ProfiledCPUMemoryReporter); replaying
those events in time order gives the bytes live at each moment, counted from when profiling
started (docs/design.md, "plait plan": what the plan is measured against).

What it sees: every tensor storage the CPU allocator hands out or takes back on a thread with
the profiler on (the caller's: forward, the CPU autograd engine's backward, the optimizer).
What it leaves out: blocks allocated before profiling started (their frees are not reported
either: c10 warns once); memory outside the allocator (Python objects); and what a
``c10d::`` collective allocates inside itself: gloo's own copies (reduce_scatter's input
clones, allgather_base's flat output), released on gloo's worker threads where the profiler
sees no free, and which NCCL does not make (its buffers are outside torch's allocator). A
block freed unseen on another thread is dropped when its address is handed out again."""

from __future__ import annotations

import bisect
from contextlib import contextmanager

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

_SPANS: set[str] = set()  # names given to LiveBytes.span, looked up in the event tree


class LiveBytes:
    """``with LiveBytes() as live:`` ... then :meth:`peak` / :meth:`at` over marked spans."""

    def __init__(self):
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.times: list[int] = []  # ns, sorted
        self.live: list[int] = []  # bytes live just after each event
        self.spans: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> LiveBytes:
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)
        allocs = []  # (ns, address, bytes: < 0 a free, inside a c10d collective)
        todo = [(n, False) for n in self._prof.profiler.kineto_results.experimental_event_tree()]
        while todo:
            node, comm = todo.pop()
            if node.typed[0] == _EventType.Allocation:
                f = node.typed[1]
                if f.device.type == "cpu":
                    allocs.append((node.start_time_ns, f.ptr, f.alloc_size, comm))
                continue
            if node.name in _SPANS:
                self.spans[node.name] = (node.start_time_ns, node.end_time_ns)
            comm = comm or node.name.startswith("c10d::")
            todo.extend((c, comm) for c in node.children)
        held: dict[int, int] = {}  # address -> bytes counted
        skipped: set[int] = set()  # addresses a collective allocated
        total = 0
        for t, ptr, n, comm in sorted(allocs, key=lambda a: a[0]):
            if n > 0:
                total -= held.pop(ptr, 0)  # its last block was freed on another thread
                skipped.discard(ptr)
                if comm:
                    skipped.add(ptr)
                    continue
                held[ptr] = n
                total += n
            elif ptr in held:
                total -= held.pop(ptr)
            else:
                skipped.discard(ptr)
                continue
            self.times.append(t)
            self.live.append(total)

    @staticmethod
    @contextmanager
    def span(name: str):
        """Marks a stretch of time (a step) to ask :meth:`peak` about later."""
        _SPANS.add(name)
        with record_function(name):
            yield

    def at(self, t_ns: int) -> int:
        """Bytes live at ``t_ns`` (allocated since profiling started and not yet freed)."""
        i = bisect.bisect_right(self.times, t_ns)
        return self.live[i - 1] if i else 0

    def peak(self, name: str) -> tuple[int, int]:
        """(bytes live when span ``name`` began, the most live at any moment inside it)."""
        t0, t1 = self.spans[name]
        start = self.at(t0)
        lo, hi = bisect.bisect_left(self.times, t0), bisect.bisect_right(self.times, t1)
        return start, max([start, *self.live[lo:hi]])


class StepPeaks:
    """``log.live_bytes``: the most live CPU tensor bytes during each step, for the trainer.
    The first recording starts before the model is built (parameters, optimizer state and
    every buffer are counted); each step's recording ends in :meth:`end` and the next starts
    from the bytes it left live. Frees between two steps (evaluation, logging) happen with the
    profiler off and are not seen, which can only add to later figures."""

    STEP = "plait live step"

    def __init__(self, on: bool):
        self.on, self.carried, self._rec, self._span = on, 0, None, None
        if on:
            self._start()

    def _start(self) -> None:
        self._rec = LiveBytes()
        self._rec.__enter__()

    def begin(self) -> None:
        if self.on:
            if self._rec is None:
                self._start()
            self._span = LiveBytes.span(self.STEP)  # entered here, left in end()
            self._span.__enter__()

    def end(self) -> int | None:
        """This step's peak in bytes (None when off)."""
        if not self.on or self._span is None:
            return None
        self._span.__exit__(None, None, None)
        self._span = None
        rec, self._rec = self._rec, None
        rec.__exit__(None, None, None)
        _, peak = rec.peak(self.STEP)
        out = self.carried + peak
        self.carried += rec.live[-1] if rec.live else 0
        return out

    def stop(self) -> None:
        if self._rec is not None:
            if self._span is not None:
                self._span.__exit__(None, None, None)
                self._span = None
            self._rec.__exit__(None, None, None)
            self._rec = None
