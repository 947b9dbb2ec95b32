"""Users and rights through a real broker: the handshake, every request type
against every right, wildcard and late-source leakage, existence not leaking."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio.testing

from turbine import RequestFailed
from turbine.audit import AUDIT_SOURCE
from turbine.auth import AuthError, AuthTable, FailureDelays, LoginRefused, is_loopback, token_hash
from turbine.client import open_client
from turbine.server import BrokerConfig, InsecureListen, serve_turbine
from turbine.testing import start_broker

TOKENS = {
    name: f"token-of-{name}-0123456789"
    for name in ("admin", "reader", "writer", "commander", "nobody")
}
RIGHTS = {
    "admin": 'admin = true\nread = ["*"]\nwrite = ["*"]\ncommand = ["*"]',
    "reader": 'read = ["daq_a*", "daq_w_*"]',
    "writer": 'write = ["daq_w*"]',
    "commander": 'read = ["daq_c_*"]\ncommand = ["daq_c_*"]',
    "nobody": "",
}
A, W, C, SECRET = (
    "daq_a_data_source",
    "daq_w_data_source",
    "daq_c_command_sink",
    "daq_secret_data_source",
)


def auth_text() -> str:
    return "\n".join(
        f'[users.{u}]\ntoken_sha256 = "{token_hash(TOKENS[u])}"\n{RIGHTS[u]}\n' for u in TOKENS
    )


@pytest.fixture
async def secured(nursery: trio.Nursery) -> str:
    address = await start_broker(nursery, auth=AuthTable.from_toml(auth_text()))
    return address


async def _seed(address: str, nursery: trio.Nursery) -> trio.Event:
    """The admin opens the four sources (W and C shared) with a frame each and
    holds them until the returned event is set."""
    ready, done = trio.Event(), trio.Event()

    async def hold() -> None:
        async with open_client(address, name="seed", token=TOKENS["admin"]) as tb:
            for name in (A, W, C, SECRET):
                src = await tb.open_source(name, shared=name in (W, C))
                await src.put("x.txt", b"one")
                await src.flush()
            for i in range(len(TOKENS)):
                src = await tb.open_source(f"daq_del{i}_data_source")
                await src.put("x.txt", b"d")
                await src.close()
            ready.set()
            await done.wait()

    nursery.start_soon(hold)
    await ready.wait()
    return done


# --- the handshake -------------------------------------------------------------


async def test_a_missing_token_is_refused_at_the_handshake_with_a_clear_error(secured: str) -> None:
    with trio.fail_after(10):
        with pytest.raises(LoginRefused, match="requires a token: give --token, set TURBINE_TOKEN"):
            async with open_client(secured, token=""):
                pass


async def test_a_wrong_token_is_refused_and_never_shown(
    secured: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        with pytest.raises(LoginRefused, match="the token was refused") as info:
            async with open_client(secured, token="guess-secret-123"):
                pass
        assert "guess-secret-123" not in str(info.value)
        async with open_client(secured, token=TOKENS["admin"]) as tb:
            assert tb.user == "admin"
            assert tb.rights is not None and tb.rights["admin"] is True
            status = json.dumps(await tb.status())
    assert "guess-secret-123" not in status and TOKENS["admin"] not in status
    assert "auth_refused" in status  # the refusal is in the closed ring, without the token
    assert "guess-secret-123" not in caplog.text and TOKENS["admin"] not in caplog.text


async def test_a_broker_without_auth_ignores_tokens(broker: str) -> None:
    with trio.fail_after(10):
        async with open_client(broker, token="anything") as tb:
            assert tb.user is None
            await tb.list_sources()


async def test_without_auth_a_non_loopback_listen_address_is_refused() -> None:
    with pytest.raises(InsecureListen, match="without --auth"):
        await serve_turbine(BrokerConfig(host="0.0.0.0", port=0))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("lab-pc")


def test_repeated_failures_from_one_host_wait_longer_in_bounded_memory() -> None:
    delays = FailureDelays(max_hosts=3)
    assert delays.wait_until("10.0.0.1") == 0
    waits = [delays.failed("10.0.0.1", now=100.0) - 100.0 for _ in range(4)]
    assert waits == pytest.approx([0.1, 0.3, 0.7, 1.5])  # each adds a doubled delay: attempts queue
    for i in range(10):
        delays.failed(f"10.0.1.{i}", now=100.0)
    assert len(delays) == 3
    delays.succeeded("10.0.1.9")
    assert delays.wait_until("10.0.1.9") == 0


async def test_guesses_through_the_broker_are_slowed_down_and_a_login_forgets_them(
    secured: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def answer_after(token: str) -> float:
        began = trio.current_time()
        try:
            async with open_client(secured, token=token):
                pass
        except LoginRefused:
            pass
        return trio.current_time() - began

    with trio.fail_after(60):
        guesses = [await answer_after(f"guess-{i}") for i in range(4)]
        login = await answer_after(TOKENS["reader"])
        after = await answer_after("guess-after-login")
        # Guesses in parallel wait their turn: no more answers per second than one at a time.
        took: list[float] = []
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(lambda i=i: _append(took, answer_after(f"parallel-{i}")))
    # Virtual time: the answers wait 0, 0.1, 0.2, 0.4 s (doubling), the right token 0.8 s,
    # and after that success a wrong token waits nothing again.
    assert guesses == pytest.approx([0, 0.1, 0.2, 0.4], abs=0.02)
    assert login == pytest.approx(0.8, abs=0.02)
    assert after == pytest.approx(0, abs=0.02)
    assert sorted(took) == pytest.approx([0.1, 0.3, 0.7], abs=0.02)


async def _append(into: list[float], wait: Any) -> None:
    into.append(await wait)


def test_auth_file_errors_say_what_is_wrong() -> None:
    with pytest.raises(AuthError, match="names no users"):
        AuthTable.from_toml("")
    with pytest.raises(AuthError, match="token_sha256 must be 64 lowercase hex"):
        AuthTable.from_toml('[users.a]\ntoken_sha256 = "abc"')
    with pytest.raises(AuthError, match="unknown keys"):
        AuthTable.from_toml(f'[users.a]\ntoken_sha256 = "{"0" * 64}"\nreed = ["*"]')
    with pytest.raises(AuthError, match="users.a.read must be a list"):
        AuthTable.from_toml(f'[users.a]\ntoken_sha256 = "{"0" * 64}"\nread = "*"')
    with pytest.raises(AuthError, match="same token"):
        AuthTable.from_toml(
            f'[users.a]\ntoken_sha256 = "{"0" * 64}"\n[users.b]\ntoken_sha256 = "{"0" * 64}"'
        )


# --- the matrix ------------------------------------------------------------------

# Who may: the truth table the operations are checked against.
READS = {
    "admin": {A, W, C, SECRET},
    "reader": {A, W},
    "writer": set(),
    "commander": {C},
    "nobody": set(),
}
WRITES = {"admin", "writer"}
COMMANDS = {"admin", "commander"}


async def _refused(call: Any) -> str:
    try:
        await call()
    except RequestFailed as exc:
        return exc.code
    return "ok"


async def _ops(tb: Any, user: str, i: int) -> dict[str, Any]:
    """Every request type once; what the user got from each."""
    got: dict[str, Any] = {}
    listed = {s.name for s in await tb.list_sources("*")}
    got["list A"] = A in listed
    got["list secret"] = SECRET in listed
    got["fetch A"] = bool(await tb.fetch(f"{A}/*", newest=1))
    got["fetch secret"] = bool(await tb.fetch(f"{SECRET}/*", newest=1))
    got["fetch C"] = bool(await tb.fetch(f"{C}/*", newest=1))
    async with tb.subscribe(f"{A}/*", start="newest") as sub:
        got["subscribe A"] = bool(sub.channels)
    async with tb.monitor(f"{W}/*") as sub:
        got["monitor W"] = bool(sub.channels)
    async with tb.subscribe(f"{SECRET}/*", start="newest") as sub:
        got["subscribe secret"] = bool(sub.channels)

    async def open_new_w() -> None:
        await tb.open_source(f"daq_w{user}_data_source")

    got["open W-new"] = await _refused(open_new_w)

    async def open_secret() -> None:
        await tb.open_source(f"daq_s{user}_data_source")

    got["open other"] = await _refused(open_secret)

    async def put(source: str) -> None:
        await tb.put(f"{source}/x.txt", b"p")
        await tb.flush()

    got["put W"] = await _refused(lambda: put(W))
    got["put C"] = await _refused(lambda: put(C))
    got["put A"] = await _refused(lambda: put(A))
    got["delete"] = await _refused(lambda: tb.delete(f"daq_del{i}_data_source"))
    got["status sees others"] = len((await tb.status())["clients"]) > 1
    return got


def _expected(user: str) -> dict[str, Any]:
    reads = READS[user]
    admin = user == "admin"
    can_write_w = user in WRITES

    def put(source: str, allowed: bool) -> str:
        if allowed:
            return "ok"
        return "access" if source in reads else "missing"  # no read: as if it did not exist

    return {
        "list A": A in reads,
        "list secret": SECRET in reads,
        "fetch A": A in reads,
        "fetch secret": SECRET in reads,
        "fetch C": C in reads,
        "subscribe A": A in reads,
        "monitor W": W in reads,
        "subscribe secret": SECRET in reads,
        "open W-new": "ok" if can_write_w else "access",
        "open other": "ok" if admin else "access",
        "put W": put(W, can_write_w),
        "put C": put(C, user in COMMANDS),
        # A is held by the seed and not shared: the admin may write it but is not its holder
        "put A": "held" if admin else put(A, False),
        "delete": "ok" if admin else "access",
        "status sees others": admin,
    }


async def test_every_request_type_against_every_right(secured: str, nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        done = await _seed(secured, nursery)
        cases = 0
        for i, user in enumerate(TOKENS):
            async with open_client(secured, name=user, token=TOKENS[user]) as tb:
                got = await _ops(tb, user, i)
            assert got == _expected(user), user
            cases += len(got)
        assert cases >= 60
        done.set()


async def test_wildcards_and_later_sources_deliver_only_what_the_user_may_read(
    secured: str, nursery: trio.Nursery
) -> None:
    with trio.fail_after(20):
        done = await _seed(secured, nursery)
        async with (
            open_client(secured, name="reader", token=TOKENS["reader"]) as reader,
            open_client(secured, name="late", token=TOKENS["admin"]) as admin,
            reader.subscribe("*/*", start="oldest") as sub,
        ):
            assert sorted(sub.channels) == [f"{A}/x.txt", f"{W}/x.txt"]
            secret2 = await admin.open_source("daq_secret2_data_source")
            a2 = await admin.open_source("daq_a2_data_source")
            await secret2.put("x.txt", b"hidden")
            await a2.put("x.txt", b"seen")
            await secret2.put("x.txt", b"hidden")
            await a2.flush()
            sources = []
            async for frame in sub:
                sources.append(frame.source)
                if frame.source == a2.name:
                    break
            assert sources == [A, W, a2.name]
            # and a fetch or list of everything holds none of the unreadable sources
            fetched = {f.source for f in await reader.fetch("*/*", oldest=10)}
            assert fetched == {A, W, a2.name}
            assert {s.name for s in await reader.list_sources("*")} == {A, W, a2.name}
        done.set()


async def test_no_access_gets_the_answer_a_missing_source_gets(
    secured: str, nursery: trio.Nursery
) -> None:
    with trio.fail_after(20):
        done = await _seed(secured, nursery)
        async with open_client(secured, token=TOKENS["nobody"]) as tb:
            assert await tb.fetch(f"{SECRET}/*", newest=5) == await tb.fetch(
                "daq_none_data_source/*", newest=5
            )
            errors = []
            for source in (SECRET, "daq_none_data_source"):
                with pytest.raises(RequestFailed) as info:
                    await tb.put(f"{source}/x.txt", b"p")
                    await tb.flush()
                errors.append((info.value.code, str(info.value).replace(source, "S")))
            assert errors[0] == errors[1]
            assert errors[0][0] == "missing"
        done.set()


async def test_ls_shows_what_the_caller_may_do(secured: str, nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        done = await _seed(secured, nursery)
        async with open_client(secured, token=TOKENS["commander"]) as tb:
            assert [(s.name, s.access) for s in await tb.list_sources("*")] == [(C, "r-c")]
        async with open_client(secured, token=TOKENS["admin"]) as tb:
            assert {s.access for s in await tb.list_sources("*")} == {"rwc"}
        done.set()


# --- turbine acl: live changes ----------------------------------------------------


@pytest.fixture
async def filed(nursery: trio.Nursery, tmp_path: Any) -> tuple[str, Any]:
    path = tmp_path / "auth.toml"
    path.write_text(auth_text())
    address = await start_broker(nursery, auth=AuthTable.load(path))
    return address, path


async def test_a_revoked_read_ends_the_subscription_with_an_error_saying_so(
    filed: tuple[str, Any], nursery: trio.Nursery
) -> None:
    address, path = filed
    with trio.fail_after(20):
        done = await _seed(address, nursery)
        async with (
            open_client(address, token=TOKENS["reader"]) as reader,
            open_client(address, token=TOKENS["admin"]) as admin,
            reader.subscribe(f"{A}/*", start="oldest") as sub,
        ):
            first = await sub.__anext__()
            assert first.data == b"one"
            users = await admin.acl("revoke", "reader", "read", "daq_a*")
            assert users["reader"]["read"] == ["daq_w_*"]
            with pytest.raises(RequestFailed, match=f"may no longer read {A}") as info:
                async for _ in sub:
                    pass
            assert info.value.code == "access"
            assert A not in {s.name for s in await reader.list_sources("*")}
            # the file says so too, atomically replaced, and it loads back the same
            assert AuthTable.load(path).users["reader"].rights.read == ("daq_w_*",)
            await admin.acl("grant", "reader", "read", "daq_a*")
            assert A in {s.name for s in await reader.list_sources("*")}
        done.set()


async def test_a_granted_read_attaches_live_subscriptions(
    filed: tuple[str, Any], nursery: trio.Nursery
) -> None:
    address, _ = filed
    with trio.fail_after(20):
        done = await _seed(address, nursery)
        async with (
            open_client(address, token=TOKENS["nobody"]) as nobody,
            open_client(address, token=TOKENS["admin"]) as admin,
            nobody.subscribe("*/*") as sub,
        ):
            assert sub.channels == []
            await admin.acl("grant", "nobody", "read", "daq_w_*")
            await admin.put(f"{W}/x.txt", b"after the grant")
            frame = await sub.__anext__()
            assert (frame.source, frame.data) == (W, b"after the grant")
        done.set()


async def test_acl_changes_take_admin_and_say_what_is_wrong(filed: tuple[str, Any]) -> None:
    address, path = filed
    before = path.read_text()
    with trio.fail_after(20):
        async with open_client(address, token=TOKENS["reader"]) as reader:
            assert list(await reader.acl("show")) == ["reader"]
            for call in (
                reader.acl("grant", "reader", "read", "*"),
                reader.acl("show", "admin"),
            ):
                with pytest.raises(RequestFailed) as info:
                    await call
                assert info.value.code == "access"
        async with open_client(address, token=TOKENS["admin"]) as admin:
            assert set(await admin.acl("show")) == set(TOKENS)
            for args, match in (
                (("grant", "eve", "read", "*"), "no user named 'eve'"),
                (("grant", "reader", "fly", "*"), "no right named 'fly'"),
                (("revoke", "reader", "write", "x*"), "has no write right on 'x\\*' to revoke"),
                (("grant", "reader", "read", "bad pat"), "invalid pattern"),
            ):
                with pytest.raises(RequestFailed, match=match):
                    await admin.acl(*args)
    assert path.read_text() == before  # nothing refused was written


async def test_acl_on_a_broker_without_auth_says_so(broker: str) -> None:
    with trio.fail_after(10):
        async with open_client(broker) as tb:
            with pytest.raises(RequestFailed, match="without --auth"):
                await tb.acl("show")


# --- the audit trail ------------------------------------------------------------


async def test_commands_acl_changes_refusals_and_failed_logins_are_audited(
    filed: tuple[str, Any], nursery: trio.Nursery
) -> None:
    address, _ = filed
    with trio.fail_after(20):
        done = await _seed(address, nursery)
        with pytest.raises(LoginRefused):
            async with open_client(address, token="not-a-token-at-all"):
                pass
        async with open_client(address, name="rig-operator", token=TOKENS["commander"]) as tb:
            await tb.put(f"{C}/command.txt", b'{"verb": "start"}')
        async with open_client(address, token=TOKENS["reader"]) as tb:
            with pytest.raises(RequestFailed):
                await tb.open_source("daq_a_data_source")
        async with open_client(address, token=TOKENS["admin"]) as admin:
            await admin.acl("grant", "nobody", "read", "daq_x*")
            frames = await admin.fetch(f"{AUDIT_SOURCE}/log.txt", oldest=100)
        entries = [json.loads(f.data) for f in frames]
        seeded = entries.pop(0)  # the seed's own frame into the command sink
        assert (seeded["event"], seeded["user"], seeded["source"]) == ("command", "admin", C)
        assert [e["event"] for e in entries] == ["login_failed", "command", "refused", "acl"]
        failed, command, refused, acl = entries
        assert failed["user"] is None and failed["from"].startswith("127.0.0.1:")
        assert command["user"] == "commander" and command["client"].startswith("rig-operator#")
        assert command["source"] == C and command["command"] == '{"verb": "start"}'
        assert refused["user"] == "reader" and "open_source refused" in refused["message"]
        assert (acl["user"], acl["target"], acl["right"], acl["pattern"]) == (
            "admin",
            "nobody",
            "read",
            "daq_x*",
        )
        assert all(isinstance(e["time"], float) for e in entries)
        assert "not-a-token-at-all" not in json.dumps(entries)
        done.set()
