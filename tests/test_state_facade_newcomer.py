"""The distributed-state-network flow as its users write it: a dict config (constructing the
server starts it), ``aes_key_file``, and ``read_data`` right after the other node's
``update_data`` returned (acknowledged writes)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import p2ptls
from p2ptls.state import _wire as wire
from p2ptls.state.facade import (
    DSNodeConfig,
    DSNodeServer,
    NotAcknowledged,
    generate_key,
)
from p2ptls.state.testing import raw_peer

DEADLINE = 30.0


def _node(
    servers: list[DSNodeServer],
    identity: p2ptls.Identity,
    options: dict[str, Any],
) -> DSNodeServer:
    config = DSNodeConfig.from_dict(options)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    identity.save(config.identity_path)  # a pooled identity: RSA keys are slow to make
    server = DSNodeServer(options)  # a dict, as distributed-state-network's users write it
    servers.append(server)
    return server


@pytest.fixture
def servers():
    started: list[DSNodeServer] = []
    yield started
    for server in started:
        server.stop()


def test_dict_config_with_aes_key_file_and_acknowledged_writes(
    tmp_path: Path, identities, servers
) -> None:
    key = tmp_path / "network.key"
    generate_key(key)
    bootstrap = _node(
        servers,
        identities[0],
        {
            "node_id": "bootstrap",
            "port": 0,
            "aes_key_file": str(key),
            "bootstrap_nodes": [],
            "credential_dir": str(tmp_path / "a"),
            "logging_dir": "ignored",
            "network_ip": None,
        },
    )
    assert bootstrap.running  # constructing it started it
    port = bootstrap.peer_record.address[1]  # type: ignore[index]
    connector = _node(
        servers,
        identities[1],
        {
            "node_id": "connector",
            "port": 0,
            "aes_key_file": str(key),
            "data_dir": str(tmp_path / "b"),
            "bootstrap_nodes": [
                {
                    "address": "127.0.0.1",
                    "port": port,
                    "record_file": str(bootstrap.config.record_path),
                }
            ],
        },
    )
    bootstrap.node.wait_for_peer("connector", timeout=DEADLINE)
    connector.node.wait_for_peer("bootstrap", timeout=DEADLINE)
    for value in ("bar", "baz", "qux"):
        connector.update_data("foo", value)
        # No waiting here: update_data returned once bootstrap had proved it holds the write.
        assert bootstrap.read_data("connector", "foo") == value
    connector.node.update_data("quick", "1", wait=False)
    assert bootstrap.node.wait_for_data("connector", "quick", timeout=DEADLINE) == "1"


def test_config_aliases(tmp_path: Path) -> None:
    config = DSNodeConfig.from_dict({"node_id": "x", "aes_key_file": "k", "network_ip": None})
    assert config.network_key_file == "k"
    assert config.network_ip == "127.0.0.1"
    assert DSNodeConfig(node_id="x", aes_key_file="k").network_key_file == "k"
    with pytest.raises(ValueError, match="different files"):
        DSNodeConfig(node_id="x", aes_key_file="k", network_key_file="other")
    with pytest.raises(ValueError, match="network_key_file"):
        DSNodeServer({"node_id": "x"})


def test_a_member_that_does_not_acknowledge_is_named(tmp_path: Path, identities, servers) -> None:
    key = tmp_path / "network.key"
    psk = generate_key(key)
    server = _node(
        servers,
        identities[0],
        {"node_id": "writer", "aes_key_file": str(key), "data_dir": str(tmp_path / "w")},
    )
    silent = identities[1]
    record, owner = server.peer_record, server.peer_id.digest
    connected = threading.Event()
    release = threading.Event()

    async def silent_member() -> None:
        # Holds the network key and its own key, takes the state, never answers a ping.
        async with raw_peer(silent, psk, record) as raw:
            await raw.send(wire.Pull(((owner, wire.NO_VERSION),)))
            connected.set()
            await trio.to_thread.run_sync(release.wait)

    thread = threading.Thread(target=trio.run, args=(silent_member,))
    thread.start()
    try:
        assert connected.wait(DEADLINE)
        server.node.wait_for_peer(silent.peer_id.hex(), timeout=DEADLINE)
        with pytest.raises(NotAcknowledged) as caught:
            server.update_data("k", "v", timeout=0.5)
        assert caught.value.node_ids == [silent.peer_id.hex()]
        assert server.read_data("writer", "k") == "v"  # the write itself is durable here
        server.update_data("k", "w", wait=False)
    finally:
        release.set()
        thread.join(DEADLINE)
