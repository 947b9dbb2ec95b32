"""Round-trip time the turbine adds to NTCP: direct vs serdes -> turbine -> translator.

Run by hand: ``python benchmarks/ntcp_rtt.py [--steps 1000] [--processes]``.

The same NTCP client sends the same requests (a cycle of propose, execute and
get-control-point, one step being one request and its reply) once straight
to the control-system simulator and once through the serdes plugin, the
broker and the transport translator. The simulator's actuator is made very
fast (1e6 units/s), so an execute costs no motion time. Prints p50/p99 per
path, the time added at p50/p99, and whether the target (under 2 ms added at
p50) is met.

By default everything runs in one trio thread (the hops are real loopback
TCP, but they share one CPU). ``--processes`` runs broker, simulator,
translator and serdes as their own processes, as a deployment would, and
also prints each one's CPU time per request on the turbine path (from
``/proc``): where the time goes on a machine whose cores they share. With
``--spy PREFIX`` it also records each process with py-spy (``$PY_SPY`` or
``py-spy`` on the path) while the turbine path is timed, as raw stacks in
``PREFIX-<role>.txt``; with ``--profile PREFIX``, with cProfile (Python calls
per request and the functions of most own time). With ``--syscalls`` it counts each process's system
calls with strace (``$STRACE`` or ``strace``) while the turbine path is timed
and prints them per request: a figure the machine's load does not move (the
times under strace are not the path's own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from throughput import cpu_seconds  # noqa: E402  (a sibling script, not a package)

from components.ntcp import NtcpClient, open_ntcp  # noqa: E402
from components.ntcp_serdes import NtcpSerdes  # noqa: E402
from components.ntcp_sim import Rig, RigConfig, serve_ntcp_sim  # noqa: E402
from components.ntcp_translator import NtcpTranslator  # noqa: E402
from turbine import BrokerConfig, open_client, serve_turbine  # noqa: E402

CP = "MDL-00-01"
TARGET_ADDED_P50_MS = 1.0
WARMUP = 60
FAST = {"displacement_speed": 1e6, "rotation_speed": 1e6}


def requests(steps: int, prefix: str) -> list[str]:
    """``steps`` request lines: open-session, then propose/execute/get-control-point cycles."""
    lines = [f"open-session\t{prefix}"]
    i = 0
    while len(lines) < steps + 1:
        x = 0.5 if i % 2 else -0.5
        lines += [
            f"propose\t{prefix}{i}\t{CP}\tx\tdisplacement\t{x:.10E}",
            f"execute\t{prefix}{i}",
            f"get-control-point\t{prefix}m{i}\t{CP}",
        ]
        i += 1
    return lines[: steps + 1]


async def measure(ntcp: NtcpClient, steps: int, prefix: str) -> dict[str, list[float]]:
    """Seconds per request, by verb (the open-session and warm-up are not counted)."""
    times: dict[str, list[float]] = {}
    lines = requests(steps + WARMUP, prefix)
    assert (await ntcp.request(lines[0])).startswith("OK"), "open-session failed"
    for n, line in enumerate(lines[1:]):
        t0 = time.perf_counter()
        reply = await ntcp.request(line)
        elapsed = time.perf_counter() - t0
        if not reply.startswith("OK"):
            raise SystemExit(f"{line!r} failed: {reply}")
        if n >= WARMUP:
            times.setdefault(line.split("\t", 1)[0], []).append(elapsed)
    await ntcp.request(f"close-session\t{prefix}")
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def in_process():
    """Broker, simulator, translator and serdes as tasks; yields (sim port, serdes port)."""
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve_turbine, BrokerConfig(host="127.0.0.1", port=0))
        broker = "{}:{}".format(*addresses[0])
        sim_port = await nursery.start(serve_ntcp_sim, Rig(RigConfig(**FAST)), "127.0.0.1", 0)
        translator = NtcpTranslator("bench", broker, {"control": f"127.0.0.1:{sim_port}"})
        nursery.start_soon(translator.serve)
        serdes = NtcpSerdes("benchSerdes", broker, {"translator": "bench", "port": 0})
        await nursery.start(serdes.serve)
        await serdes.wait_connected()
        serdes_port = serdes.port  # bound by then (port 0: the one it got)
        await wait_for_sink(broker)
        yield sim_port, serdes_port, {}
        nursery.cancel_scope.cancel()


async def wait_for_sink(broker: str) -> None:
    async with open_client(broker) as tb:
        async with tb.subscribe("ntcp_bench_data_source/metadata.txt", start="oldest") as sub:
            await sub.receive()


@asynccontextmanager
async def as_processes(profile: str | None = None, log_level: str = "WARNING"):
    """Broker, simulator, translator and serdes as processes; yields (sim port, serdes
    port, each process's pid by its role).  The components log at ``log_level``;
    with ``profile``, each runs under ``_profiled.py`` (cProfile between SIGUSR1
    and SIGUSR2, to PREFIX-<role>.prof)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    broker_port, sim_port, serdes_port = free_port(), free_port(), free_port()
    broker = f"127.0.0.1:{broker_port}"
    py = sys.executable
    commands = [
        [py, "-m", "turbine", "serve", "--port", str(broker_port)],
        [py, "-m", "components.ntcp_sim", "--name", "benchSim", "--turbine", broker,
         "--set", f"port={sim_port}", "--set", "displacement_speed=1e6",
         "--set", "rotation_speed=1e6", "--log-level", log_level],
        [py, "-m", "components.ntcp_translator", "--name", "bench", "--turbine", broker,
         "--set", f"control=127.0.0.1:{sim_port}", "--log-level", log_level],
        [py, "-m", "components.ntcp_serdes", "--name", "benchSerdes", "--turbine", broker,
         "--set", "translator=bench", "--set", f"port={serdes_port}", "--log-level", log_level],
    ]  # fmt: skip
    roles = ("broker", "simulator", "translator", "serdes")
    if profile is not None:
        profiled = str(REPO / "benchmarks" / "_profiled.py")
        commands = [
            [py, profiled, f"{profile}-{role}.prof", *command[2:]]
            for role, command in zip(roles, commands, strict=True)
        ]
    processes = []
    try:
        for command in commands:
            processes.append(await trio.lowlevel.open_process(command, cwd=REPO, env=env))
        with trio.fail_after(20):
            while True:
                try:
                    await wait_for_sink(broker)
                    async with open_ntcp("127.0.0.1", serdes_port) as ntcp:
                        await ntcp.request("get-parameter\tprobe\tnone")
                    async with open_ntcp("127.0.0.1", sim_port):
                        break
                except Exception:  # not up yet
                    await trio.sleep(0.2)
        yield sim_port, serdes_port, {role: p.pid for role, p in zip(roles, processes, strict=True)}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await process.wait()


@asynccontextmanager
async def spying(pids: dict[str, int], prefix: str | None):
    """py-spy recording each of ``pids`` (raw stacks, PREFIX-<role>.txt) for the block."""
    if prefix is None:
        yield
        return
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy"
    spies = [
        await trio.lowlevel.open_process(
            [spy, "record", "-r", "1000", "--nonblocking", "-f", "raw", "-p", str(pid),
             "-o", f"{prefix}-{role}.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]  # fmt: skip
    try:
        await trio.sleep(1)  # attached
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        for process in spies:
            await process.wait()


@asynccontextmanager
async def profiling(pids: dict[str, int], prefix: str | None):
    """cProfile each of ``pids`` (run under ``_profiled.py``) for the block; the
    stats are written when the processes stop."""
    if prefix is None:
        yield
        return
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR1)
    try:
        yield
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR2)


def print_profiles(prefix: str, roles: list[str], requests_made: int, top: int = 12) -> None:
    """Python calls per request of each role, and its functions of most own time."""
    import pstats

    print("\nPython per request on the turbine path (cProfile; its times are not the path's):")
    for role in roles:
        stats = pstats.Stats(f"{prefix}-{role}.prof").stats  # type: ignore[attr-defined]
        calls = sum(row[1] for row in stats.values())
        print(f"  {role:<12}{calls / requests_made:8.0f} calls")
        rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
        for (file, line, name), (_, ncalls, own, _, _) in rows:
            where = f"{Path(file).name}:{line}" if line else ""
            print(
                f"      {ncalls / requests_made:7.2f} calls {own / requests_made * 1e6:7.1f} us"
                f"  {name} {where}"
            )


@asynccontextmanager
async def counting_syscalls(pids: dict[str, int], on: bool):
    """strace counting each of ``pids``'s system calls for the block; yields a dict
    filled, after the block, with ``{role: {syscall: calls}}``."""
    counts: dict[str, dict[str, int]] = {}
    if not on:
        yield counts
        return
    tracer = os.environ.get("STRACE") or shutil.which("strace") or "strace"
    outputs = {role: Path(f"/tmp/ntcp_rtt-{os.getpid()}-{role}.strace") for role in pids}
    tracers = [
        await trio.lowlevel.open_process(
            [tracer, "-c", "-f", "-U", "calls,name", "-o", str(outputs[role]), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]  # fmt: skip
    try:
        await trio.sleep(1)  # attached
        yield counts
    finally:
        for process in tracers:
            process.send_signal(signal.SIGINT)  # strace writes its summary and detaches
        for process in tracers:
            await process.wait()
        for role, path in outputs.items():
            counts[role] = syscall_counts(path.read_text())
            path.unlink()


def syscall_counts(summary: str) -> dict[str, int]:
    """``{syscall: calls}`` from the table ``strace -c -U calls,name`` writes."""
    counts = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1] != "total":
            counts[fields[1]] = int(fields[0])
    return counts


async def main(
    steps: int,
    processes: bool,
    spy: str | None = None,
    syscalls: bool = False,
    profile: str | None = None,
    log_level: str = "WARNING",
) -> None:
    setup = as_processes(profile, log_level) if processes else in_process()
    async with setup as (sim_port, serdes_port, pids):
        async with open_ntcp("127.0.0.1", sim_port) as ntcp:
            direct = await measure(ntcp, steps, "d")
        async with (
            open_ntcp("127.0.0.1", serdes_port) as ntcp,
            spying(pids, spy),
            counting_syscalls(pids, syscalls) as calls,
            profiling(pids, profile),
        ):
            cpu = {role: cpu_seconds(pid) for role, pid in pids.items()}
            via = await measure(ntcp, steps, "t")
            cpu = {role: cpu_seconds(pid) - cpu[role] for role, pid in pids.items()}
    mode = "separate processes" if processes else "one process"
    print(f"NTCP round trip, {steps} steps per path ({mode}, after {WARMUP} warm-up steps)\n")
    print(f"{'path':<22}{'verb':<20}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    rows = {}
    for name, times in (("direct", direct), ("serdes+turbine", via)):
        every = [t for ts in times.values() for t in ts]
        rows[name] = every
        for verb, ts in [*sorted(times.items()), ("all", every)]:
            print(
                f"{name:<22}{verb:<20}{len(ts):>6}{pct(ts, 50) * 1e3:>10.3f}"
                f"{pct(ts, 99) * 1e3:>10.3f}{statistics.fmean(ts) * 1e3:>10.3f}"
            )
    added50 = (pct(rows["serdes+turbine"], 50) - pct(rows["direct"], 50)) * 1e3
    added99 = (pct(rows["serdes+turbine"], 99) - pct(rows["direct"], 99)) * 1e3
    verdict = "met" if added50 < TARGET_ADDED_P50_MS else "NOT met"
    print(f"\nadded by the turbine path: p50 {added50:.3f} ms, p99 {added99:.3f} ms")
    print(f"target: under {TARGET_ADDED_P50_MS:g} ms added at p50: {verdict}")
    if cpu:
        requests_made = steps + WARMUP
        print(f"\nCPU per request on the turbine path ({os.getloadavg()[0]:.1f} load):")
        for role, seconds in cpu.items():
            print(f"  {role:<12}{seconds / requests_made * 1e6:8.0f} us")
    if calls:
        requests_made = steps + WARMUP
        names = sorted({name for c in calls.values() for name in c})
        busy = [n for n in names if max(c.get(n, 0) for c in calls.values()) >= requests_made / 10]
        print(
            "\nSystem calls per request on the turbine path (strace; its times are not the path's):"
        )
        print(f"  {'':<12}" + "".join(f"{n[:11]:>12}" for n in [*busy, "all"]))
        for role, c in calls.items():
            row = [c.get(n, 0) for n in busy] + [sum(c.values())]
            print(f"  {role:<12}" + "".join(f"{v / requests_made:12.2f}" for v in row))
    if profile is not None:
        print_profiles(profile, list(pids), steps + WARMUP)  # written as they stopped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="requests timed per path")
    parser.add_argument("--processes", action="store_true", help="run each part as a process")
    parser.add_argument("--spy", metavar="PREFIX", help="py-spy each process (with --processes)")
    parser.add_argument(
        "--syscalls", action="store_true", help="count each process's system calls (--processes)"
    )
    parser.add_argument(
        "--profile", metavar="PREFIX", help="cProfile each process, to PREFIX-<role>.prof"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the components' log level, with --processes (a deployment's default: INFO)",
    )
    args = parser.parse_args()
    if (args.spy or args.syscalls or args.profile) and not args.processes:
        parser.error("--spy, --syscalls and --profile need --processes")
    trio.run(
        main, args.steps, args.processes, args.spy, args.syscalls, args.profile, args.log_level
    )
