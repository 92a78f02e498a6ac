"""The synchronous facade (``p2ptls.state.facade``), shaped like distributed-state-network.

Nodes run in background threads on 127.0.0.1. Tests wait for events (``wait_for_data``,
``wait_for_peer``, ``threading.Event``) with generous bounds that only turn a hang into a
failure; nothing sleeps.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import p2ptls
from p2ptls.state import StateNodeConfig, open_state_node
from p2ptls.state.facade import (
    NAME_KEY,
    AmbiguousNode,
    BootstrapError,
    DSNodeConfig,
    DSNodeServer,
    NodeStopped,
    UnknownNode,
    generate_key,
    load_peer_record,
    save_peer_record,
)

DEADLINE = 30.0


@pytest.fixture
def network_key(tmp_path: Path) -> Path:
    path = tmp_path / "network.key"
    generate_key(path)
    return path


@pytest.fixture
def servers() -> Iterator[list[DSNodeServer]]:
    started: list[DSNodeServer] = []
    yield started
    for server in started:
        server.stop()


def start(
    servers: list[DSNodeServer],
    identity: p2ptls.Identity,
    node_id: str,
    data_dir: Path,
    key: Path,
    *,
    bootstrap: list[dict[str, Any]] | None = None,
    **options: Any,
) -> DSNodeServer:
    """Start a node, giving it a pooled identity (RSA keys are slow to make)."""
    config = DSNodeConfig(
        node_id=node_id,
        port=0,
        network_key_file=key,
        bootstrap_nodes=bootstrap or [],
        data_dir=data_dir,
        **options,
    )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not config.identity_path.exists():
        identity.save(config.identity_path)
    server = DSNodeServer.start(config)
    servers.append(server)
    return server


def port_of(server: DSNodeServer) -> int:
    address = server.peer_record.address
    assert address is not None
    return address[1]


def test_readme_flow(tmp_path: Path, identities, network_key: Path, servers) -> None:
    """generate_key, a bootstrap node, a connector that names it by address only, then a
    write on one node read on the other."""
    data = tmp_path / "data"
    bootstrap = start(servers, identities[0], "bootstrap", data, network_key)
    connector = start(
        servers,
        identities[1],
        "connector",
        data,
        network_key,
        bootstrap=[{"address": "127.0.0.1", "port": port_of(bootstrap)}],
    )
    connector.node.update_data("foo", "bar")
    assert bootstrap.node.wait_for_data("connector", "foo", timeout=DEADLINE) == "bar"
    assert bootstrap.node.read_data("connector", "foo") == "bar"
    assert bootstrap.read_data("connector", "missing") is None
    assert connector.node.read_data("connector", "foo") == "bar"
    connector.node.wait_for_peer("bootstrap", timeout=DEADLINE)
    bootstrap.node.wait_for_peer("connector", timeout=DEADLINE)
    assert sorted(bootstrap.peers()) == ["bootstrap", "connector"]
    assert connector.peers()[0] == "connector"
    assert bootstrap.node.state("connector") == {"foo": "bar"}
    assert connector.node_id() == "connector"
    # The node's advertised record carries its name; the record file it wrote has its address.
    record = load_peer_record(connector.config.record_path)
    assert record.name == "connector"
    assert record.peer_id == connector.peer_id
    assert record.address == ("127.0.0.1", port_of(connector))


def test_files_are_private_and_named_by_hash(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    data = tmp_path / "data"
    node_id = "../../etc/x\x00y"
    server = start(servers, identities[0], node_id, data, network_key)
    server.node.update_data("k", "v")
    server.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    names = sorted(p.name for p in data.iterdir())
    assert names and all(n.startswith("node-") for n in names)
    stem = names[0].split(".")[0]
    assert len(stem) == len("node-") + 32
    assert {n.split(".", 1)[1] for n in names} >= {"key", "sqlite3", "record.json"}
    for path in data.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert not (tmp_path / "etc").exists()
    assert network_key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        generate_key(network_key)


def test_callbacks(tmp_path: Path, identities, network_key: Path, servers) -> None:
    data = tmp_path / "data"
    updated = threading.Event()
    disconnected = threading.Event()
    received: list[tuple[str, bytes]] = []
    got_message = threading.Event()

    def on_receive(node_id: str, payload: bytes) -> None:
        received.append((node_id, payload))
        got_message.set()

    first = start(servers, identities[0], "first", data, network_key)
    first.set_update_cb(updated.set)
    first.set_disconnect_cb(disconnected.set)
    first.set_receive_cb(on_receive)
    second = start(
        servers,
        identities[1],
        "second",
        data,
        network_key,
        bootstrap=[{"record_file": first.config.record_path}],
    )
    second.update_data("temperature", "21.5")
    assert updated.wait(DEADLINE)
    assert first.node.wait_for_data("second", "temperature", "21.5", timeout=DEADLINE) == "21.5"
    second.send_to_node("first", b"hello first")
    assert got_message.wait(DEADLINE)
    assert received == [("second", b"hello first")]
    second.stop()
    assert disconnected.wait(DEADLINE)
    # The stopped node's state stays readable (stale); it is no longer a peer.
    assert first.read_data("second", "temperature") == "21.5"
    assert first.peers() == ["first"]
    # receive_data hands data to the node's own callback, as the original does.
    first.receive_data(b"local")
    assert received[-1] == ("first", b"local")


def test_bootstrap_by_record_and_record_file(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    hub = start(servers, identities[0], "hub", tmp_path / "hub", network_key)
    by_record = start(
        servers,
        identities[1],
        "by-record",
        tmp_path / "a",
        network_key,
        bootstrap=[{"record": hub.peer_record.to_dict()}],
    )
    by_file = start(
        servers,
        identities[2],
        "by-file",
        tmp_path / "b",
        network_key,
        bootstrap=[{"record_file": str(hub.config.record_path)}],
    )
    hub.update_data("role", "hub")
    for server in (by_record, by_file):
        assert server.node.wait_for_data("hub", "role", timeout=DEADLINE) == "hub"
    # by-record and by-file never met directly: they learn each other through the hub.
    by_file.update_data("x", "1")
    assert by_record.node.wait_for_data("by-file", "x", timeout=DEADLINE) == "1"


def test_address_only_bootstrap_needs_a_record(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    hub = start(servers, identities[0], "hub", tmp_path / "hub", network_key)
    entry = [{"address": "127.0.0.1", "port": port_of(hub)}]
    with pytest.raises(BootstrapError, match="needs the node's public key"):
        start(servers, identities[1], "lost", tmp_path / "elsewhere", network_key, bootstrap=entry)
    # With the hub's record directory named, the address is found.
    found = start(
        servers,
        identities[1],
        "found",
        tmp_path / "elsewhere",
        network_key,
        bootstrap=entry,
        record_dir=tmp_path / "hub",
    )
    found.node.wait_for_peer("hub", timeout=DEADLINE)
    # A record file others may write is refused.
    hub.config.record_path.chmod(0o666)
    with pytest.raises(BootstrapError, match="writable by group or others"):
        load_peer_record(hub.config.record_path)


def test_names_resolve_and_conflicts_are_reported(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    hub = start(servers, identities[0], "hub", tmp_path / "hub", network_key)
    boot = [{"record_file": str(hub.config.record_path)}]
    one = start(servers, identities[1], "twin", tmp_path / "one", network_key, bootstrap=boot)
    two = start(servers, identities[2], "twin", tmp_path / "two", network_key, bootstrap=boot)
    one.update_data("k", "one")
    two.update_data("k", "two")
    hub.node.wait_for_data(one.peer_id.hex(), "k", "one", timeout=DEADLINE)
    hub.node.wait_for_data(two.peer_id.hex(), "k", "two", timeout=DEADLINE)
    with pytest.raises(AmbiguousNode):
        hub.read_data("twin", "k")
    assert hub.node.read_data(two.peer_id.hex(), "k") == "two"
    with pytest.raises(UnknownNode):
        hub.read_data("nobody", "k")
    with pytest.raises(KeyError):  # as the original's read_data of an unknown node
        hub.read_data("nobody", "k")
    with pytest.raises(ValueError, match="reserved"):
        hub.update_data(NAME_KEY, "impostor")
    # A name pinned by a bootstrap record wins over other claims.
    pinned_record = one.peer_record
    path = tmp_path / "twin.record.json"
    save_peer_record(path, pinned_record)
    reader = start(
        servers,
        identities[3],
        "reader",
        tmp_path / "reader",
        network_key,
        bootstrap=[{"record_file": path}],
    )
    reader.node.wait_for_data(two.peer_id.hex(), "k", "two", timeout=DEADLINE)
    assert reader.read_data("twin", "k") == "one"


def test_a_claimed_name_cannot_capture_a_peer_id(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    """A member that claims another member's peer id as its name: the id still means the peer
    that holds it. (A facade node refuses such a node_id; an impostor writes the claim itself.)"""
    hub = start(servers, identities[0], "hub", tmp_path / "hub", network_key)
    boot = [{"record_file": str(hub.config.record_path)}]
    victim = start(servers, identities[1], "victim", tmp_path / "v", network_key, bootstrap=boot)
    victim.update_data("k", "real")
    victim_id = victim.peer_id.hex()
    psk = p2ptls.NetworkKey.load(network_key)
    impostor, hub_record = identities[2], hub.peer_record
    release = threading.Event()
    failures: list[BaseException] = []

    async def impostor_node() -> None:
        config = StateNodeConfig(identity=impostor, psk=psk, bootstrap=[hub_record])
        async with open_state_node(config) as node:
            await node.update({NAME_KEY: victim_id, "k": "forged"})
            await trio.to_thread.run_sync(release.wait)

    def run_impostor() -> None:
        try:
            trio.run(impostor_node)
        except BaseException as exc:
            failures.append(exc)
            raise

    thread = threading.Thread(target=run_impostor)
    thread.start()
    try:
        hub.node.wait_for_data(impostor.peer_id.hex(), "k", "forged", timeout=DEADLINE)
        hub.node.wait_for_data(victim_id, "k", "real", timeout=DEADLINE)
        assert hub.read_data(victim_id, "k") == "real"
        assert hub.read_data(victim_id.upper(), "k") == "real"
        assert hub.read_data("victim", "k") == "real"
    finally:
        release.set()
        thread.join(DEADLINE)
    assert not failures


def test_restart_keeps_identity_and_state(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    data = tmp_path / "data"
    first = start(servers, identities[0], "durable", data, network_key)
    peer_id = first.peer_id
    first.node.update_many({"a": "1", "b": b"\xff\x00"})
    first.node.delete_data("a")
    first.stop()
    first.stop()  # idempotent
    assert first.is_shut_down()
    with pytest.raises(NodeStopped):
        first.update_data("c", "3")
    again = DSNodeServer.start(
        DSNodeConfig(node_id="durable", network_key_file=network_key, data_dir=data)
    )
    servers.append(again)
    assert again.peer_id == peer_id
    assert again.read_data("durable", "a") is None
    assert again.node.read_bytes("durable", "b") == b"\xff\x00"
    with pytest.raises(UnicodeDecodeError):
        again.read_data("durable", "b")


def test_unreachable_bootstrap_alerts_and_carries_on(
    tmp_path: Path, identities, network_key: Path, servers
) -> None:
    gone = start(servers, identities[0], "gone", tmp_path / "gone", network_key)
    record_path = gone.config.record_path
    gone.stop()
    alerts: list[str] = []
    alerted = threading.Event()

    def alert(message: str) -> None:
        alerts.append(message)
        alerted.set()

    config = DSNodeConfig(
        node_id="lonely",
        network_key_file=network_key,
        data_dir=tmp_path / "lonely",
        bootstrap_nodes=[{"record_file": record_path}],
        start_timeout=0.5,
        persistent=False,
    )
    (tmp_path / "lonely").mkdir(mode=0o700)
    identities[1].save(config.identity_path)
    server = DSNodeServer.start(config, alert)
    servers.append(server)
    assert alerted.wait(DEADLINE)
    assert alerts == ["Could not connect to any bootstrap node"]
    server.update_data("still", "works")
    assert server.read_data("lonely", "still") == "works"


def test_config_from_dict() -> None:
    config = DSNodeConfig.from_dict(
        {
            "node_id": "sensor_1",
            "port": 8000,
            "network_key_file": "network.key",
            "credential_dir": "creds",
            "logging_dir": "logs",
            "bootstrap_nodes": [{"address": "coordinator.local", "port": 8000}],
        }
    )
    assert config.data_dir == Path("creds")
    assert config.entries[0].address == "coordinator.local"
    assert config.entries[0].to_dict() == {"address": "coordinator.local", "port": 8000}
    with pytest.raises(ValueError, match="network_key_file"):
        DSNodeConfig.from_dict({"node_id": "x", "aes_key": "00" * 16})
    with pytest.raises(ValueError, match="unknown"):
        DSNodeConfig.from_dict({"node_id": "x", "colour": "blue"})
    with pytest.raises(ValueError):
        DSNodeConfig(node_id="")
    with pytest.raises(ValueError):
        DSNodeConfig(node_id="a" * 64)  # looks like a peer id
    for entry, message in (
        ({"port": 1}, "needs a record, a record_file or an address"),
        ({"address": "h", "port": True}, "port must be an integer"),
        ({"address": "h", "port": 65536}, "port must be an integer"),
        ({"address": 5, "port": 1}, "address must be a string"),
        ({"record": 5}, "a peer record is a JSON object"),
        ({"record": {"peer_id": "00"}}, "bootstrap record: malformed peer entry"),
        ({"record_file": 5}, "record_file must be a path"),
        ({"address": "h", "port": 1, "colour": "blue"}, "unknown bootstrap entry fields"),
    ):
        with pytest.raises(BootstrapError, match=message):
            DSNodeConfig(node_id="x", bootstrap_nodes=[entry])
    with pytest.raises(BootstrapError, match="a mapping or a BootstrapNode"):
        DSNodeConfig(node_id="x", bootstrap_nodes=["127.0.0.1:8000"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="network_key_file"):
        DSNodeServer(DSNodeConfig(node_id="x"))


def test_record_file_round_trip(tmp_path: Path, identities) -> None:
    record = identities[0].peer_record(name="n", address=("127.0.0.1", 9))
    path = tmp_path / "r.json"
    save_peer_record(path, record)
    assert load_peer_record(path) == record
    data = json.loads(path.read_text())
    data["peer_id"] = identities[1].peer_id.hex()
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    with pytest.raises(BootstrapError, match="not the hash"):
        load_peer_record(path)


def test_a_port_in_use_is_reported(tmp_path: Path, identities, network_key: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = DSNodeConfig(
            node_id="late",
            port=taken.getsockname()[1],
            network_key_file=network_key,
            data_dir=tmp_path / "late",
        )
        (tmp_path / "late").mkdir(mode=0o700)
        identities[0].save(config.identity_path)
        with pytest.raises(OSError):
            DSNodeServer.start(config)
