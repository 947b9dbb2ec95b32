"""The ``mirror`` request: a pull mirror inside the target broker, as its asker sees it."""

from __future__ import annotations

import functools

import pytest
import trio

from tests.test_cli import TURBINE
from tests.test_mirror import MIRROR_TOKENS, auth_table
from turbine import RequestFailed, open_client
from turbine import messages as m
from turbine._mirror_ask import MirrorUnsupported
from turbine.mirror import MirrorConfig, run_mirror
from turbine.protocol import NEED_DATA, Connection, Role
from turbine.testing import start_broker

SRC = "daq_rig_data_source"
HOST = "127.0.0.1"


@pytest.fixture
async def brokers(nursery) -> tuple[str, str]:
    """A (the origin) and B (the target)."""
    return await start_broker(nursery, identity="aaaa"), await start_broker(
        nursery, identity="bbbb"
    )


async def asked(tb, origin, *patterns, **fields):
    return await tb.mirror_inside(origin, list(patterns), poll=0.02, retry=0.02, **fields)


async def test_each_ask_says_what_the_mirror_inside_did_since_the_last(brokers):
    a, b = brokers
    with trio.fail_after(20):
        async with (
            open_client(a, name="daq") as pa,
            open_client(b, name="puller") as pb,
            open_client(b) as rb,
        ):
            src = await pa.open_source(SRC)
            for i in range(3):
                await src.put("x", b"%d" % i)
            await pa.flush()
            replies = [await asked(pb, a, "daq_*")]
            async with rb.subscribe(f"{SRC}/x", start=1) as sub:
                assert [(await sub.receive()).data for _ in range(3)] == [b"0", b"1", b"2"]
            replies += [await asked(pb, a, "daq_*"), await asked(pb, a, "daq_*")]
            assert replies[-1]["copying"] and replies[-1]["reports"] == []  # nothing twice
            assert [line for r in replies for line in r["reports"]] == [
                f"mirror: copying {SRC} to {SRC} ({SRC} on broker aaaa)"
            ]
            assert {k: sum(r[k] for r in replies) for k in ("sessions", "sources", "frames")} == {
                "sessions": 1,
                "sources": 1,
                "frames": 3,
            }
            (info,) = await rb.list_sources(SRC)
            assert info.holder.startswith("puller#")  # the asker holds the copy


async def test_a_connection_runs_one_mirror_and_refuses_a_bad_one(brokers):
    a, b = brokers
    with trio.fail_after(20):
        async with open_client(b) as pb:
            with pytest.raises(RequestFailed, match="pattern") as bad:
                await asked(pb, a, "bad pattern")
            assert bad.value.code in ("name", "request")
            await asked(pb, a, "daq_*")
            with pytest.raises(RequestFailed, match="runs another mirror already") as other:
                await asked(pb, a, "video_*")
            assert other.value.code == "request"
            await asked(pb, a, "daq_*")  # its own mirror is still there to ask


async def test_with_access_control_a_user_who_may_write_nothing_may_not_ask(nursery):
    a = await start_broker(nursery, identity="aaaa")
    b = await start_broker(nursery, identity="bbbb", auth=auth_table(from_a='read = ["*"]'))
    with trio.fail_after(20):
        async with open_client(b, token=MIRROR_TOKENS["from_a"]) as reader:
            with pytest.raises(RequestFailed, match="takes the write right") as refused:
                await asked(reader, a, "daq_*")
            assert refused.value.code == "access"
        async with open_client(b, token=MIRROR_TOKENS["admin"]) as admin:
            assert (await asked(admin, a, "daq_*"))["reports"] == []


async def test_asked_with_a_target_the_broker_pushes_its_own_sources_there(brokers):
    a, b = brokers
    with trio.fail_after(20):
        async with (
            open_client(a, name="daq") as pa,
            open_client(a, name="pusher") as asker,
            open_client(b) as rb,
        ):
            src = await pa.open_source(SRC)
            await src.put("x", b"before")
            await pa.flush()
            first = await asked(asker, None, "daq_*", target=b)
            async with rb.subscribe(f"{SRC}/x", start=1) as sub:
                assert (await sub.receive()).data == b"before"
                await src.put("x", b"after")
                frame = await sub.receive()
                assert (frame.seq, frame.data) == (2, b"after")
            later = await asked(asker, None, "daq_*", target=b)
            assert (first["reports"] + later["reports"])[0] == (
                f"mirror: copying {SRC} to {SRC} ({SRC} on broker aaaa)"
            )
            (info,) = await rb.list_sources(SRC)
            assert info.holder.startswith("pusher#")  # A's client of B, in the asker's name
            assert info.mirror is not None


async def test_a_mirror_request_names_either_its_origin_or_its_target(nursery):
    a = await start_broker(nursery, identity="aaaa")
    with trio.fail_after(20):
        async with open_client(a) as asker:
            for origin, target in ((None, None), (a, a)):
                with pytest.raises(RequestFailed, match="one of them") as bad:
                    await asked(asker, origin, "daq_*", target=target)
                assert bad.value.code == "request"


UNKNOWN = "unknown message type 'mirror'; known types: acl, client_hello, delete"
PULL_ONLY = "'mirror' message lacks its 'origin' field"


async def start_older_broker(nursery: trio.Nursery, refusal: str) -> str:
    """A broker from before a mirror inside it: the ``mirror`` message is a protocol
    error (``refusal``), answered as every broker answers one (error, then close)."""

    async def serve(stream: trio.SocketStream) -> None:
        proto = Connection(Role.BROKER)
        await stream.send_all(b"".join(proto.send(m.Hello(protocol=1, software="turbine 0.0.9"))))
        while data := await stream.receive_some():
            proto.receive_data(data)
            while (msg := proto.next_event()) is not NEED_DATA:
                if msg.type == "mirror":
                    error = m.Error(id=None, code="protocol", message=refusal)
                    await stream.send_all(b"".join(proto.send(error)))
                    await stream.aclose()
                    return

    (listener, *_) = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host=HOST))
    return f"{HOST}:{listener.socket.getsockname()[1]}"


@pytest.mark.parametrize(
    ("inside", "refusal"),
    [("to", UNKNOWN), ("from", UNKNOWN), ("from", PULL_ONLY)],
    ids=["pull, no mirror request", "push, no mirror request", "push, a pull-only request"],
)
async def test_a_mirror_asked_of_a_broker_without_it_stops_at_once_saying_so(
    nursery, inside, refusal
):
    older = await start_older_broker(nursery, refusal)
    other = await start_broker(nursery, identity="bbbb")
    origin, target = (older, other) if inside == "from" else (other, older)
    config = MirrorConfig(origin, target, ("daq_*",), poll=0.01, retry=0.01, inside=inside)
    reports: list[str] = []
    with trio.fail_after(10), pytest.raises(MirrorUnsupported) as stopped:  # (not retried)
        await run_mirror(config, report=reports.append)
    assert str(stopped.value) == (
        f"the broker at {older} (turbine 0.0.9) does not support a mirror inside it "
        f"(--inside {inside}): it does not know this 'mirror' request; upgrade it, "
        "or run the mirror without --inside, as a process of its own"
    )
    assert reports == []


async def test_turbine_mirror_inside_a_broker_without_it_says_so_once_and_exits_1(nursery):
    older = await start_older_broker(nursery, UNKNOWN)
    with trio.fail_after(20):
        done = await trio.run_process(
            [TURBINE, "mirror", "--from", older, "--to", f"{HOST}:1", "--inside", "from", "daq_*"],
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"Error: mirror: the broker at {older} (turbine 0.0.9) does not support a mirror "
        "inside it (--inside from): it does not know this 'mirror' request; upgrade it, "
        "or run the mirror without --inside, as a process of its own"
    ]
