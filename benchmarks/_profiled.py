"""Run a module as ``python -m`` would, profiled (cProfile) only between two signals.

``python benchmarks/_profiled.py OUT MODULE [ARG ...]``: SIGUSR1 starts the
profiler, SIGUSR2 stops it; the stats are written to ``OUT`` (``pstats``
format) when the module returns (a component stops so on SIGTERM). ``benchmarks/ntcp_rtt.py --profile`` runs each process so, to count
what the timed requests cost and not the start-up.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys

if __name__ == "__main__":
    out, module, *args = sys.argv[1:]
    profiler = cProfile.Profile()

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.dump_stats(out)
