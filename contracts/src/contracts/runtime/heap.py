"""The garbage collector set for a long-running service once it has started.

A service's heap is mostly what it built at start (modules, classes, schemas, caches), which never becomes garbage;
CPython's collector scanned all of it at each full collection (70-80 ms each for the single-layout process, ~140 MB)
and scanned young objects every 700 container allocations, which a generation makes tens of thousands of: about
3 % of the hub's CPU under load, measured by gc.callbacks during bench/cost_bench.py. Once started, what exists is
moved out of the collector's sight (`gc.freeze`) and young collections come every GEN0_THRESHOLD allocations: the
collector's share falls to ~0.3 %. Garbage in reference cycles (most garbage is freed by reference counting at
once) waits a little longer to be collected: a few MB at most.
"""

from __future__ import annotations

import asyncio
import gc

GEN0_THRESHOLD = 10_000  # CPython's default is 700
SETTLE_AFTER_S = 1.0  # after the last start in this process (several services start side by side in one)

_settling: asyncio.TimerHandle | None = None


def settle_soon() -> None:
    """Settle the heap SETTLE_AFTER_S from now, once for services started together in one process (each start
    calls this; a later one moves the settling after it)."""
    global _settling
    if _settling is not None:
        _settling.cancel()
    _settling = asyncio.get_running_loop().call_later(SETTLE_AFTER_S, settle)


def settle() -> None:
    """Collect what the start left as garbage, freeze the rest and space out young collections."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
