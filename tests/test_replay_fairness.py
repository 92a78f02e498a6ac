"""A network-key holder flooding Hellos cannot lock honest peers out through the binder memory.

Anyone with the network key can make Hellos whose binder verifies. Stamped up to ``F`` (60 s)
ahead and sent fast enough to overflow the replay guard's memory of binders, they used to push
one global floor to ``now + F`` and so refuse every honest Hello. The memory is now fair per
source (IPv4 address, IPv6 /64) and each source has its own floor: the flood only ever forgets,
and refuses, the flooders' own Hellos (SPEC.md section 3.5).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2ptls import KnownPeers, SecureStream, SecurityContext
from p2ptls.trust import Admission, ReplayGuard
from tests.host_harness import assert_host_serves, good_client, serving_host
from tests.hostile_support import (
    CONFIG,
    NETWORK_KEY,
    SAFETY_NET,
    hello_of,
    make_initiator,
    next_timestamp,
    parties,
)

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
AHEAD = 60 * SECOND  # the most a Hello may lead the responder's clock
HONEST = "198.51.100.7"


def _binder(source: str, index: int) -> bytes:
    return f"{source} {index}".encode().ljust(32, b".")


# -- the guard, sans-IO --------------------------------------------------------------------------


@pytest.mark.parametrize("flooders", [1, 3, 24])  # 24 sources overflow the total, not just shares
def test_a_flood_of_hellos_from_the_future_does_not_refuse_another_source(flooders: int) -> None:
    guard = ReplayGuard(max_recent_hellos=4096)  # each source's share as by default: 1/16
    assert guard.max_recent_per_source == 256
    sources = [f"203.0.113.{n}" for n in range(flooders)]
    early = _binder(HONEST, 0)
    assert guard.admit_hello(early, NOW - SECOND, NOW, HONEST) is Admission.NEW
    flood = 3 * guard.max_recent_hellos  # the memory overflows three times over
    for index in range(flood):
        source = sources[index % flooders]
        now = NOW + index
        outcome = guard.admit_hello(_binder(source, index), now + AHEAD, now, source)
        assert outcome is Admission.NEW
    now = NOW + flood
    # An honest Hello from elsewhere is admitted, and an honest Hello admitted before the flood
    # is still remembered (a copy of it is answered, without RSA work).
    assert guard.admit_hello(_binder(HONEST, 1), now, now, HONEST) is Admission.NEW
    assert guard.admit_hello(early, NOW - SECOND, now, HONEST) is Admission.SEEN
    assert guard.floor_of(HONEST) == -1
    # The flooders' forgotten Hellos stay refused from where they came, and so do their own
    # Hellos from the future, for as long as their flood is remembered.
    for first, source in enumerate(sources):
        assert guard.floor_of(source) > now  # ahead of every honest clock
        stale = guard.admit_hello(_binder(source, first), NOW + first + AHEAD, now, source)
        assert stale is Admission.REFUSED
        assert guard.admit_hello(_binder(source, -1), now, now, source) is Admission.REFUSED
    # The most recent flood Hellos are still remembered: a copy (from anywhere) is answered
    # from the remembered decryption, not decrypted again.
    last = flood - 1
    copy = guard.admit_hello(_binder(sources[last % flooders], last), NOW + last + AHEAD, now)
    assert copy is Admission.SEEN


def test_floors_are_kept_only_for_sources_holding_binders() -> None:
    """The floors are a table peers add to: one at most per source in the bounded memory."""
    guard = ReplayGuard(max_recent_hellos=8, max_recent_per_source=2)
    for index in range(200):  # each source sends three: the first is forgotten, raising a floor
        source = f"203.0.113.{index // 3}"
        guard.admit_hello(_binder(source, index), NOW + index, NOW, source)
    held = {f"203.0.113.{n}" for n in range(67) if guard.floor_of(f"203.0.113.{n}") != -1}
    assert 0 < len(held) <= 8  # not one per source ever seen
    # When its last binder leaves the window, a source's floor goes with it.
    later = NOW + 2 * guard.window_ns
    assert guard.admit_hello(_binder(HONEST, 0), later, later, HONEST) is Admission.NEW
    assert all(guard.floor_of(source) == -1 for source in held)


def test_streams_without_a_source_share_one_as_before() -> None:
    guard = ReplayGuard(max_recent_hellos=2)
    assert guard.admit_hello(b"a" * 32, NOW, NOW) is Admission.NEW
    assert guard.admit_hello(b"b" * 32, NOW + 1, NOW) is Admission.NEW
    assert guard.admit_hello(b"c" * 32, NOW + 2, NOW) is Admission.NEW  # forgets a, floor rises
    assert guard.admit_hello(b"a" * 32, NOW, NOW) is Admission.REFUSED
    assert guard.admit_hello(b"d" * 32, NOW + 1, NOW) is Admission.REFUSED


def test_a_source_needs_room_for_two_binders() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(max_recent_hellos=8, max_recent_per_source=1)
    with pytest.raises(ValueError):
        ReplayGuard(max_recent_hellos=1)


# -- through secure streams: the flood on the wire ------------------------------------------------


async def _send_hello(context: SecurityContext, source: str, hello: bytes) -> bool:
    """Send a Hello to a responding stream that came from ``source``; whether it answered.

    The sender then hangs up, so the handshake fails on the responder's side either way."""
    sender, receiver = trio.testing.memory_stream_pair()
    stream = SecureStream(receiver, context, server_side=True, source=source)

    async def respond() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(respond)
        await sender.send_all(hello)
        answered = await sender.receive_some() != b""
        await sender.aclose()
    return answered


async def _honest_handshake(context: SecurityContext, source: str) -> bool:
    """A trusted initiator connects from ``source``; whether the handshake completed."""
    cast = parties()
    client_context = SecurityContext(
        cast.initiator,
        NETWORK_KEY,
        KnownPeers([cast.responder.record]),
        config=CONFIG,
        offload_private_key_operations=False,
    )
    client_end, server_end = trio.testing.memory_stream_pair()
    client = SecureStream(client_end, client_context, remote=cast.responder.record)
    server = SecureStream(server_end, context, server_side=True, source=source)
    completed = []

    async def run(stream: SecureStream) -> None:
        try:
            await stream.do_handshake()
            completed.append(stream)
        except trio.BrokenResourceError:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, client)
        nursery.start_soon(run, server)
    for stream in completed:
        await stream.aclose()
    return len(completed) == 2


def _flood_hellos(count: int) -> list[bytes]:
    """Hellos of a network member nobody trusts: they pass the binder. Stamped a second apart
    (their clear timestamps are whole seconds), the last 59 s ahead of now."""
    cast = parties()
    start = next_timestamp()
    return [
        hello_of(
            make_initiator(
                identity=cast.stranger,
                timestamp_ns=start + (59 - count + 1 + index) * SECOND,
                seed=b"flood %d" % index,
            )
        )
        for index in range(count)
    ]


async def test_a_member_flooding_from_a_few_addresses_cannot_lock_out_another() -> None:
    cast = parties()
    guard = ReplayGuard(max_recent_hellos=16, max_recent_per_source=8)
    responder = SecurityContext(
        cast.responder,
        NETWORK_KEY,
        KnownPeers([cast.initiator.record]),
        config=CONFIG,
        replay_guard=guard,
        offload_private_key_operations=False,
    )
    assert await _honest_handshake(responder, HONEST)
    flooders = ["203.0.113.1", "203.0.113.2", "2001:db8:1::/64"]
    flood = []
    # The memory overflows six times over.
    for index, hello in enumerate(_flood_hellos(6 * guard.max_recent_hellos)):
        source = flooders[index % len(flooders)]
        assert await _send_hello(responder, source, hello)
        flood.append((source, hello))
    decryptions = responder.private_key_operations
    # The flood worked on its own sources: their floors are ahead of every honest clock...
    assert not await _honest_handshake(responder, flooders[0])
    # ...and their first Hellos, forgotten, stay refused there (no reply, no RSA work)...
    for source, hello in flood[: len(flooders)]:
        assert not await _send_hello(responder, source, hello)
    # ...while their latest ones are still remembered: answered without RSA work.
    assert await _send_hello(responder, *flood[-1])
    assert responder.private_key_operations == decryptions
    # Anyone else is served.
    assert await _honest_handshake(responder, HONEST)
    assert await _honest_handshake(responder, "2001:db8:2::/64")


async def test_the_host_charges_each_hello_to_its_source_address() -> None:
    """End to end: flooding Hellos from three loopback addresses lock out only those addresses."""
    flooders = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    with trio.fail_after(SAFETY_NET):
        async with serving_host() as harness:
            guard = ReplayGuard(max_recent_hellos=16, max_recent_per_source=8)
            harness.host.context.replay_guard = guard  # small, to overflow it quickly
            for index, hello in enumerate(_flood_hellos(3 * guard.max_recent_hellos)):
                tcp = await trio.open_tcp_stream(
                    *harness.host.address, local_address=flooders[index % len(flooders)]
                )
                async with tcp:
                    await tcp.send_all(hello)
                    assert await tcp.receive_some() != b""  # admitted: a Reply
            with pytest.raises(trio.BrokenResourceError):  # refused there, with no reply
                await good_client(harness, local_address=flooders[0])
            await assert_host_serves(harness, local_address="127.0.0.1")
            await assert_host_serves(harness, local_address="127.0.0.5")
