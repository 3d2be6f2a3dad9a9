"""Measurement helpers shared by the benchmark scripts (time and peak CPU memory of a callable)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(fns: dict[str, Callable[[], object]], *, repeats: int = 5) -> dict[str, float]:
    """Median times of several callables run in turns, so drift in machine load hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


@contextlib.contextmanager
def _profiler_lines_hidden() -> Iterator[None]:
    """The profiler's own start and stop lines (kineto writes them to file descriptor 2, below
    Python) kept out of a benchmark's output, which prints its rows only. Whatever the measured call
    writes to stderr meanwhile is hidden too: it is a kernel call, timed and measured, nothing else."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak of live CPU tensor memory allocated while fn() runs, from the profiler's allocation events.

    Counts what fn allocates on top of what already exists (weights, inputs), the CPU analogue of
    torch.cuda.max_memory_allocated() after reset_peak_memory_stats().
    """
    from torch.profiler import ProfilerActivity, profile

    with _profiler_lines_hidden(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def set_threads() -> int:
    """Use every core this process may run on, and say how many."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return torch.get_num_threads()
