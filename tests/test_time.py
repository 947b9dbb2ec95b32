"""The broker's clock against a client's: turbine time and the offset at connect."""

from __future__ import annotations

import pytest
import trio

from turbine._clock import clock_offset, wall_time
from turbine.client import open_client
from turbine.testing import start_broker

AHEAD = 0.2  # the broker's clock runs this far ahead of the client's


def test_the_on_wire_estimate_is_exact_for_equal_legs() -> None:
    # sent at 10.0 (A), arrives 15.25 (B), answered 15.5 (B), back at 10.75 (A): legs 0.25 each
    assert clock_offset(10.0, 15.25, 15.5, 10.75) == (5.0, 0.5)


async def test_time_and_status_show_the_clock_offset(nursery: trio.Nursery) -> None:
    address = await start_broker(nursery, clock=lambda: wall_time() + AHEAD)
    with trio.fail_after(10):
        async with open_client(address) as tb:
            reading = await tb.time(exchanges=5)
            status = await tb.status()
    # the on-wire method is off by at most half the round trip whatever the legs
    assert abs(reading.offset - AHEAD) <= reading.round_trip / 2 + 1e-6
    assert reading.exchanges == 5
    (me,) = status["clients"]
    assert me["clock_offset"] == pytest.approx(-AHEAD, abs=me["clock_rtt"] / 2 + 1e-6)


async def test_a_client_without_clock_fields_has_no_offset(broker: str) -> None:
    from turbine.protocol import encode_bytes

    with trio.fail_after(10):
        host, port = broker.split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(encode_bytes("client_hello", {"protocol": 1, "name": "old"}))
        async with open_client(broker) as tb:
            clients: dict[str, dict] = {}
            while "old" not in clients:  # until the broker has read the raw client's hello
                clients = {c["name"].split("#")[0]: c for c in (await tb.status())["clients"]}
        await stream.aclose()
    assert clients["old"]["clock_offset"] is None
    assert clients["client"]["clock_offset"] is not None
