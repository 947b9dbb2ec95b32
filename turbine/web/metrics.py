"""``/metrics``: the broker's status and sources in the Prometheus text format.

Each scrape asks the broker for ``status`` and ``list`` (and every MCP's
newest ``state.json``) and writes what they say with ``prometheus_client`` (a collector per scrape, so nothing is cached
between scrapes and a vanished source disappears from the next one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..client import Client, SourceInfo

#: Where an MCP publishes its programs' states: ``mcp_<name>_data_source/state.json``.
MCP_STATE_SUFFIX, MCP_STATE_CHANNEL = "_data_source", "state.json"

#: Per-client counters of the broker's status: (status key, metric name, help).
_CLIENT_COUNTERS = (
    ("frames_in", "turbine_client_frames_in", "Frames the client put."),
    ("frames_out", "turbine_client_frames_out", "Frames the broker sent the client."),
    ("bytes_in", "turbine_client_bytes_in", "Bytes the broker read from the client."),
    ("bytes_out", "turbine_client_bytes_out", "Bytes the broker wrote to the client."),
    ("gaps", "turbine_client_gaps", "Gaps reported to the client (frames it was too slow for)."),
    ("slow_events", "turbine_client_slow_events", "Times the client was a slow consumer."),
)


class _Snapshot(Collector):
    def __init__(
        self,
        status: Mapping[str, Any],
        sources: Sequence[SourceInfo],
        sites: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.status = status
        self.sources = sources
        self.sites = sites

    def collect(self) -> Iterator[Metric]:
        st = self.status
        yield GaugeMetricFamily("turbine_up", "1: the viewer reached the broker.", value=1)
        yield GaugeMetricFamily(
            "turbine_uptime_seconds", "Seconds since the broker started.", value=st["uptime"]
        )
        memory = GaugeMetricFamily(
            "turbine_memory_bytes",
            "Broker ring memory by kind (used, reserved, limit).",
            labels=["kind"],
        )
        for kind in ("used", "reserved", "limit"):
            if kind in st.get("memory", {}):
                memory.add_metric([kind], st["memory"][kind])
        yield memory
        clients = st.get("clients", [])
        yield GaugeMetricFamily("turbine_clients", "Clients connected.", value=len(clients))
        subs = GaugeMetricFamily(
            "turbine_subscriptions", "Subscriptions open, per client.", labels=["client"]
        )
        for c in clients:
            subs.add_metric([c["name"]], len(c.get("subscriptions", [])))
        yield subs
        for key, name, doc in _CLIENT_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["client"])
            for c in clients:
                if key in c:
                    family.add_metric([c["name"]], c[key])
            yield family
        yield CounterMetricFamily(
            "turbine_slow_events",
            "Slow-consumer events since the broker started.",
            value=st.get("slow_events", 0),
        )
        yield GaugeMetricFamily(
            "turbine_sources", "Sources the broker holds.", value=len(self.sources)
        )
        yield from self._sources()
        yield from self._programs()
        disk = st.get("disk")
        if isinstance(disk, Mapping):  # a broker with a data dir
            yield from _disk(disk, st.get("time"))

    def _sources(self) -> Iterator[Metric]:
        online = GaugeMetricFamily(
            "turbine_source_online", "1 while a client holds the source.", labels=["source"]
        )
        held = GaugeMetricFamily(
            "turbine_source_bytes", "Bytes the source's ring holds.", labels=["source"]
        )
        put = CounterMetricFamily(
            "turbine_channel_frames",
            "Frames put on the channel since it was made (its newest sequence number).",
            labels=["source", "channel"],
        )
        frames = GaugeMetricFamily(
            "turbine_channel_frames_held",
            "Frames the channel's ring holds.",
            labels=["source", "channel"],
        )
        nbytes = GaugeMetricFamily(
            "turbine_channel_bytes_held",
            "Bytes the channel's ring holds.",
            labels=["source", "channel"],
        )
        rate = GaugeMetricFamily(
            "turbine_channel_rate_hz", "Frames per second lately.", labels=["source", "channel"]
        )
        frames_in = CounterMetricFamily(
            "turbine_source_frames_in",
            "Frames stored in the source since the broker started.",
            labels=["source"],
        )
        bytes_in = CounterMetricFamily(
            "turbine_source_bytes_in",
            "Payload bytes stored in the source since the broker started.",
            labels=["source"],
        )
        frames_out = CounterMetricFamily(
            "turbine_source_frames_out",
            "Frames of the source sent (to subscribers, in fetch answers) since the broker started.",
            labels=["source"],
        )
        bytes_out = CounterMetricFamily(
            "turbine_source_bytes_out",
            "Payload bytes of the source sent since the broker started.",
            labels=["source"],
        )
        for s in self.sources:
            online.add_metric([s.name], int(s.online))
            held.add_metric([s.name], s.bytes)
            for family, value in (
                (frames_in, s.frames_in),
                (bytes_in, s.bytes_in),
                (frames_out, s.frames_out),
                (bytes_out, s.bytes_out),
            ):
                if value is not None:  # (a broker that does not count it)
                    family.add_metric([s.name], value)
            for c in s.channels:
                labels = [s.name, c.name]
                put.add_metric(labels, c.last_seq or 0)
                frames.add_metric(labels, c.frames)
                nbytes.add_metric(labels, c.bytes)
                if c.rate is not None:
                    rate.add_metric(labels, c.rate)
        yield from (
            online,
            held,
            put,
            frames,
            nbytes,
            rate,
            frames_in,
            bytes_in,
            frames_out,
            bytes_out,
        )

    def _programs(self) -> Iterator[Metric]:
        labels = ["mcp", "program"]
        state = GaugeMetricFamily(
            "turbine_mcp_program_state",
            "1 for the program's state now (running, stopped, backoff, failed ...).",
            labels=[*labels, "state"],
        )
        restarts = CounterMetricFamily(
            "turbine_mcp_program_restarts", "Times the MCP restarted the program.", labels=labels
        )
        uptime = GaugeMetricFamily(
            "turbine_mcp_program_uptime_seconds", "Seconds the program has run.", labels=labels
        )
        for mcp, site in self.sites.items():
            for name, p in site["programs"].items():
                if not isinstance(p, dict):
                    continue
                state.add_metric([mcp, name, str(p.get("state"))], 1)
                restarts.add_metric([mcp, name], p.get("restarts") or 0)
                if p.get("uptime") is not None:
                    uptime.add_metric([mcp, name], p["uptime"])
        yield from (state, restarts, uptime)


#: The disk archive's figures in the broker's status: (key, metric name, kind, help).
_DISK = (
    ("bytes", "turbine_disk_bytes", GaugeMetricFamily, "Bytes the archive holds on disk."),
    ("reserved", "turbine_disk_reserved_bytes", GaugeMetricFamily, "Disk reserved by sources."),
    ("limit", "turbine_disk_limit_bytes", GaugeMetricFamily, "The broker's disk budget."),
    ("commits", "turbine_disk_commits", CounterMetricFamily, "Archive commits (synced batches)."),
    ("bytes_written", "turbine_disk_written_bytes", CounterMetricFamily, "Payload bytes written."),
    ("write_rate", "turbine_disk_write_rate_bytes", GaugeMetricFamily, "Bytes per second lately."),
    ("backlog", "turbine_disk_backlog", GaugeMetricFamily, "Frames waiting to be written."),
    ("syncs", "turbine_disk_syncs", CounterMetricFamily, "Syncs of the archive to stable storage."),
    ("sync_seconds", "turbine_disk_sync_seconds", CounterMetricFamily, "Seconds syncs took."),
    (
        "last_sync_seconds",
        "turbine_disk_last_sync_duration_seconds",
        GaugeMetricFamily,
        "Seconds the newest sync took.",
    ),
)


def _disk(disk: Mapping[str, Any], now: float | None) -> Iterator[Metric]:
    for key, name, kind, doc in _DISK:
        value = disk.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield kind(name, doc, value=value)
    if isinstance(disk.get("last_sync"), int | float) and isinstance(now, int | float):
        yield GaugeMetricFamily(
            "turbine_disk_last_sync_age_seconds",
            "Seconds since the archive last synced to disk.",
            value=max(now - disk["last_sync"], 0.0),
        )
    for key, doc in (
        ("errors", "Sources whose archive writes fail."),
        ("damage", "Sources with damage found in their archive."),
        ("broken", "Sources whose archive cannot be read."),
    ):
        if isinstance(disk.get(key), Mapping):
            yield GaugeMetricFamily(f"turbine_disk_{key}_sources", doc, value=len(disk[key]))


async def metrics_text(client: Client) -> bytes:
    """The Prometheus exposition of the broker ``client`` is connected to, now."""
    status = await client.status()
    sources = await client.list_sources()
    sites: dict[str, Mapping[str, Any]] = {}
    for s in sources:  # each MCP publishes its programs' states (turbine/mcp/site.py)
        if s.name.startswith("mcp_") and s.name.endswith(MCP_STATE_SUFFIX):
            newest = await client.fetch(f"{s.name}/{MCP_STATE_CHANNEL}", newest=1)
            try:
                site = json.loads(newest[-1].data)
            except (IndexError, ValueError):
                continue  # none yet, or not JSON: nothing to say about it
            if isinstance(site, dict) and isinstance(site.get("programs"), dict):
                sites[s.name.removesuffix(MCP_STATE_SUFFIX)] = site
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status, sources, sites))
    return generate_latest(registry)
