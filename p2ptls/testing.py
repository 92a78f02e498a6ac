"""Helpers for testing code that uses p2ptls, in the manner of ``trio.testing``.

``memory_secure_stream_pair()`` and ``lockstep_secure_stream_pair()`` return two connected
:class:`~p2ptls.SecureStream` objects over trio's in-memory streams, with fresh identities that
trust each other and share a fresh network key. The handshake runs on first use, as with any
secure stream.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from .config import StreamConfig
from .context import SecurityContext
from .identity import Identity, NetworkKey
from .stream import SecureStream
from .trust import KnownPeers

TEST_KEY_BITS = 2048


def connected_contexts(
    *,
    config: StreamConfig | None = None,
    identities: tuple[Identity, Identity] | None = None,
    key_bits: int = TEST_KEY_BITS,
) -> tuple[SecurityContext, SecurityContext]:
    """Two security contexts (client, server) that trust each other and share a network key."""
    client_id, server_id = identities or (Identity.generate(key_bits), Identity.generate(key_bits))
    psk = NetworkKey.generate()
    # RSA work stays on the event loop here, so trio's autojump clock works with these pairs.
    client = SecurityContext(
        client_id,
        psk,
        KnownPeers([server_id.record]),
        config=config,
        offload_private_key_operations=False,
    )
    server = SecurityContext(
        server_id,
        psk,
        KnownPeers([client_id.record]),
        config=config,
        offload_private_key_operations=False,
    )
    return client, server


def secure_stream_pair_over(
    transports: tuple[trio.abc.Stream, trio.abc.Stream],
    contexts: tuple[SecurityContext, SecurityContext],
) -> tuple[SecureStream, SecureStream]:
    """Wrap two connected transports (client, server) in secure streams."""
    client_context, server_context = contexts
    client = SecureStream(transports[0], client_context, remote=server_context.identity.record)
    server = SecureStream(transports[1], server_context, server_side=True)
    return client, server


def _pair(
    make: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]],
    config: StreamConfig | None,
    identities: tuple[Identity, Identity] | None,
) -> tuple[SecureStream, SecureStream]:
    contexts = connected_contexts(config=config, identities=identities)
    return secure_stream_pair_over(make(), contexts)


def memory_secure_stream_pair(
    *, config: StreamConfig | None = None, identities: tuple[Identity, Identity] | None = None
) -> tuple[SecureStream, SecureStream]:
    """Two connected secure streams over ``trio.testing.memory_stream_pair`` (client, server).

    Fresh RSA-2048 identities are generated unless ``identities`` (client, server) are given.
    """
    return _pair(trio.testing.memory_stream_pair, config, identities)


def lockstep_secure_stream_pair(
    *, config: StreamConfig | None = None, identities: tuple[Identity, Identity] | None = None
) -> tuple[SecureStream, SecureStream]:
    """Two connected secure streams over ``trio.testing.lockstep_stream_pair`` (client, server)."""
    return _pair(trio.testing.lockstep_stream_pair, config, identities)
