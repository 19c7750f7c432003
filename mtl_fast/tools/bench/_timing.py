"""Timing: warm-up, then repeated calls, reported as median and quantiles.

On a CUDA device every call is bracketed by CUDA events (device time, no host overhead between
calls is counted), and the L2 cache is flushed before each call by writing a 256 MiB buffer, as
``triton.testing.do_bench`` does: a gradient that fits in L2 would otherwise be timed from cache.
On the CPU ``time.perf_counter`` brackets each call; caches are not flushed (a CPU has no cheap
equivalent), so sizes that fit in the last-level cache read faster than memory.
:func:`measure_interleaved` times several CPU providers in turn, round after round, optionally
in thread CPU time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

_FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``n`` timed calls."""

    median: float
    q20: float
    q80: float
    n: int

    @staticmethod
    def of(samples: list[float]) -> Timing:
        """Median and 20/80 % quantiles of per-call times (seconds)."""
        if not samples:
            raise ValueError("samples is empty")
        s = sorted(samples)

        def q(frac: float) -> float:
            return s[min(len(s) - 1, max(0, round(frac * (len(s) - 1))))]

        return Timing(statistics.median(s), q(0.2), q(0.8), len(s))


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 2,
    min_repeat: int = 3,
    max_repeat: int = 100,
    min_time: float = 0.3,
    flush_cache: bool = True,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then at least ``min_repeat`` timed
    calls and more until ``min_time`` seconds of timed calls or ``max_repeat`` calls.

    Example:
        >>> t = measure(lambda: sum(range(100)), torch.device("cpu"), min_time=0.0)
        >>> t.n >= 3 and t.median > 0
        True
    """
    if min_repeat < 1 or max_repeat < min_repeat:
        raise ValueError(f"need 1 ≤ min_repeat ≤ max_repeat, got {min_repeat}, {max_repeat}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        return _measure_cuda(fn, device, min_repeat, max_repeat, min_time, flush_cache)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_repeat or (spent < min_time and len(samples) < max_repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
    return Timing.of(samples)


def _measure_cuda(
    fn: Callable[[], object],
    device: torch.device,
    min_repeat: int,
    max_repeat: int,
    min_time: float,
    flush_cache: bool,
) -> Timing:
    flush = (
        torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if flush_cache else None
    )
    # Estimate the number of calls from one timed call, then time them all without host syncs.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    one = max(start.elapsed_time(end) / 1e3, 1e-7)
    n = int(min(max_repeat, max(min_repeat, min_time / one)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return Timing.of([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)])


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def measure_interleaved(
    providers: dict[str, Callable[[], object]],
    *,
    warmup: int = 1,
    min_repeat: int = 5,
    max_repeat: int = 50,
    min_time: float = 0.5,
    sample_time: float = 0.02,
    clock: str = "thread",
) -> dict[str, Timing | Exception]:
    """Time several CPU callables in rounds — every provider once per round, in turn — so that
    a change of machine load hits them all alike; medians of per-call times.

    ``clock="thread"``: CPU time of this thread (``time.thread_time``), a fair measure of
    single-threaded code on a machine shared with other processes (time spent waiting for the
    core is not counted); ``"wall"``: ``time.perf_counter``. Each sample repeats a provider's
    call enough times to last about ``sample_time`` seconds (calibrated on its first call).
    Rounds continue until every provider has ``min_repeat`` samples and ``min_time`` seconds
    were timed, or ``max_repeat`` rounds. A provider that raises is dropped and its exception
    returned in its place.

    Example:
        >>> t = measure_interleaved({"a": lambda: sum(range(100))}, min_time=0.0, min_repeat=2)
        >>> t["a"].n >= 2
        True
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    if min_repeat < 1 or max_repeat < min_repeat:
        raise ValueError(f"need 1 ≤ min_repeat ≤ max_repeat, got {min_repeat}, {max_repeat}")
    now = CLOCKS[clock]
    out: dict[str, Timing | Exception] = {}
    calls: dict[str, int] = {}
    for name, fn in providers.items():
        try:
            for _ in range(warmup):
                fn()
            t0 = now()
            fn()
            first = max(now() - t0, 1e-7)
        except Exception as exc:  # recorded by the caller, the others go on
            out[name] = exc
            continue
        calls[name] = max(1, min(10_000, int(sample_time / first)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    spent = 0.0
    rounds = 0
    while calls and rounds < max_repeat and (rounds < min_repeat or spent < min_time):
        for name, n in list(calls.items()):
            fn = providers[name]
            try:
                t0 = now()
                for _ in range(n):
                    fn()
                dt = now() - t0
            except Exception as exc:
                out[name] = exc
                del calls[name]
                continue
            samples[name].append(dt / n)
            spent += dt
        rounds += 1
    for name, s in samples.items():
        if name not in out and s:
            out[name] = Timing.of(s)
    return out
