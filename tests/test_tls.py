"""TLS between client and broker: verified by default, and every mismatch a clear error."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio

from turbine import ConnectionFailed
from turbine.auth import AuthTable, LoginRefused, token_hash
from turbine.client import open_client
from turbine.testing import start_broker
from turbine.tls import make_lab_certs, server_context


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_lab_certs(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def other_lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_lab_certs(tmp_path_factory.mktemp("other"))


async def _tls_broker(nursery: trio.Nursery, certs: dict[str, Path], **config: object) -> str:
    return await start_broker(
        nursery, tls=server_context(certs["server"], certs["server-key"]), **config
    )


async def test_a_client_that_trusts_the_lab_ca_talks_tls(
    nursery: trio.Nursery, lab: dict[str, Path]
) -> None:
    address = await _tls_broker(
        nursery,
        lab,
        auth=AuthTable.from_toml(
            f'[users.u]\ntoken_sha256 = "{token_hash("t" * 20)}"\nread = ["*"]\nwrite = ["*"]'
        ),
    )
    with trio.fail_after(20):
        async with open_client(address, tls_ca=lab["ca"], token="t" * 20) as tb:
            assert tb.user == "u"
            src = await tb.open_source("daq_tls_data_source")
            big = bytes(range(256)) * 4096  # 1 MiB: many TLS records
            await src.put("x.bin", big)
            await src.put("y.txt", b"small")
            await src.flush()
            async with tb.subscribe("daq_tls_data_source/*", start="oldest") as sub:
                got = [await sub.__anext__(), await sub.__anext__()]
            assert sorted((f.channel, f.data) for f in got) == [("x.bin", big), ("y.txt", b"small")]


async def test_a_certificate_from_another_ca_is_refused(
    nursery: trio.Nursery, lab: dict[str, Path], other_lab: dict[str, Path]
) -> None:
    address = await _tls_broker(nursery, lab)
    with trio.fail_after(20):
        with pytest.raises(
            ConnectionFailed, match="certificate is not valid: .*unable to get local issuer"
        ):
            async with open_client(address, tls_ca=other_lab["ca"]):
                pass


async def test_an_expired_certificate_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    old = make_lab_certs(
        tmp_path, days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    )
    address = await _tls_broker(nursery, old)
    with trio.fail_after(20):
        with pytest.raises(
            ConnectionFailed, match="certificate is not valid: certificate has expired"
        ):
            async with open_client(address, tls_ca=old["ca"]):
                pass


async def test_a_plain_client_at_a_tls_port_is_told_to_use_tls(
    nursery: trio.Nursery, lab: dict[str, Path]
) -> None:
    address = await _tls_broker(nursery, lab)
    with trio.fail_after(20):
        with pytest.raises(ConnectionFailed, match="this broker speaks TLS only"):
            async with open_client(address):
                pass
        async with open_client(address, tls_ca=lab["ca"]) as tb:  # and the broker carries on
            assert (await tb.status())["closed"][0]["code"] == "tls_refused"


async def test_a_tls_client_at_a_plain_port_is_told_it_does_not_speak_tls(
    broker: str, lab: dict[str, Path]
) -> None:
    with trio.fail_after(20):
        with pytest.raises(ConnectionFailed, match="does not speak TLS"):
            async with open_client(broker, tls_ca=lab["ca"]):
                pass
        async with open_client(broker) as tb:
            await tb.status()


async def test_a_refused_login_over_tls_costs_only_that_connection(
    nursery: trio.Nursery, lab: dict[str, Path]
) -> None:
    table = AuthTable.from_toml(f'[users.u]\ntoken_sha256 = "{token_hash("t" * 20)}"\nadmin = true')
    address = await _tls_broker(nursery, lab, auth=table)
    with trio.fail_after(20):
        for _ in range(2):  # the refusal's drain meets a TLS peer that hung up
            with pytest.raises(LoginRefused, match="the token was refused"):
                async with open_client(address, tls_ca=lab["ca"], token="wrong" * 4):
                    pass
        async with open_client(address, tls_ca=lab["ca"], token="t" * 20) as tb:
            codes = [c["code"] for c in (await tb.status())["closed"]]
    assert codes == ["auth_refused", "auth_refused"]


async def test_a_reconnecting_client_comes_back_over_tls_with_its_token(
    lab: dict[str, Path], tmp_path: Path
) -> None:
    from tests.test_reconnect import Broker

    table = AuthTable.from_toml(
        f'[users.u]\ntoken_sha256 = "{token_hash("t" * 20)}"\nread = ["*"]\nwrite = ["*"]'
    )
    tls = server_context(lab["server"], lab["server-key"])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker = Broker(nursery, tmp_path, tls=tls, auth=table)
            address = await broker.start()
            async with open_client(address, tls_ca=lab["ca"], token="t" * 20, reconnect=True) as tb:
                src = await tb.open_source("daq_tls_data_source", {"x": "text/plain"})
                await src.put("x", b"before")
                await src.flush()
                await broker.stop()
                await tb._down.wait()
                await src.put("x", b"during")  # spooled while the broker is away
                await broker.start()
                await tb.flush(timeout=20)  # sent once it logged in again, over TLS
                frames = await tb.fetch("daq_tls_data_source/x", oldest=10)
                assert tb.user == "u"
            await broker.stop()
    assert [f.data for f in frames] == [b"before", b"during"]
