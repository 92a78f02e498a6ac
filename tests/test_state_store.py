"""The SQLite state store: crashes mid-write (hostile input 40), ownership checks, locking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import p2ptls
from p2ptls.state import _crypto
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._store import StateStore
from p2ptls.state.errors import StateStoreError
from p2ptls.state.testing import Forger

ROOT = Path(__file__).resolve().parent.parent
NETWORK = _crypto.network_id(p2ptls.NetworkKey(bytes(range(32))))
ME = b"\x07" * 32

CHILD = r"""
import os, sys
from p2ptls import Identity, NetworkKey
from p2ptls.state import _crypto
from p2ptls.state._replica import ReplicaCore
from p2ptls.state._store import StateStore
from p2ptls.state.testing import Forger

path, mode = sys.argv[1], sys.argv[2]
network = _crypto.network_id(NetworkKey(bytes(range(32))))
me = b"\x07" * 32
store = StateStore(path, network=network, owner=me)
core = ReplicaCore(network, me, b"")
forger = Forger(Identity.generate(2048), network)

def write_round(n):
    records = forger.records([(f"k{i}", b"round %d" % n) for i in range(200)])
    since = core.mark(forger.owner)
    core.receive_updates_untrusted(forger.updates(forger.span(records, since=since)))
    return core.take_changes()

store.apply(write_round(0))
if mode == "exit-mid-transaction":
    changes = write_round(1)

    class Crashing:
        def __init__(self, db):
            self.db, self.calls = db, 0
        def execute(self, *args):
            return self.db.execute(*args)
        def executemany(self, *args):
            self.calls += 1
            result = self.db.executemany(*args)
            if self.calls == 3:
                os._exit(3)  # dies inside the transaction, after some statements ran
            return result

    store._db = Crashing(store._db)
    store.apply(changes)
else:
    n = 1
    while True:
        store.apply(write_round(n))
        print("committed", n, flush=True)
        n += 1
"""


def run_child(path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reopen(path: Path) -> ReplicaCore:
    store = StateStore(path, network=NETWORK, owner=ME)
    try:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        core = ReplicaCore(NETWORK, ME, b"")
        store.load_into(core)
    finally:
        store.close()
    return core


def values_of_only_other_owner(core: ReplicaCore) -> dict[str, bytes]:
    others = [state for owner, state in core.owners.items() if owner != ME]
    assert len(others) == 1
    return others[0].values()


def test_exit_in_the_middle_of_a_transaction_keeps_the_previous_contents(tmp_path) -> None:
    path = tmp_path / "state.sqlite3"
    child = run_child(path, "exit-mid-transaction")
    _out, err = child.communicate(timeout=120)
    assert child.returncode == 3, err
    values = values_of_only_other_owner(reopen(path))
    assert values == {f"k{i}": b"round 0" for i in range(200)}


def test_kill_during_a_stream_of_transactions_leaves_one_whole_round(tmp_path) -> None:
    path = tmp_path / "state.sqlite3"
    child = run_child(path, "loop")
    try:
        assert child.stdout is not None
        # Let it commit a few rounds and be somewhere inside another, then kill it outright.
        for expected in (1, 2, 3):
            assert child.stdout.readline().split() == ["committed", str(expected)]
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
    values = values_of_only_other_owner(reopen(path))
    assert len(set(values.values())) == 1  # every key from the same (committed) round
    assert set(values) == {f"k{i}" for i in range(200)}


def test_an_exception_inside_a_write_rolls_it_back(tmp_path, identities) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore(path, network=NETWORK, owner=ME)
    core = ReplicaCore(NETWORK, ME, b"")
    forger = Forger(identities[0], NETWORK)
    records = forger.records([("a", b"1")])
    core.receive_updates_untrusted(forger.updates(forger.span(records)))
    store.apply(core.take_changes())
    records = forger.records([("a", b"2"), ("b", b"3")])
    core.receive_updates_untrusted(forger.updates(forger.span(records, since=(1, 1))))
    changes = core.take_changes()
    changes.owners.append((b"bad", (2**70, 1), b""))  # out of SQLite's range: fails mid-write
    with pytest.raises(OverflowError):
        store.apply(changes)
    store.close()
    assert values_of_only_other_owner(reopen(path)) == {"a": b"1"}


def test_database_of_another_network_or_identity_is_refused(tmp_path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore(path, network=NETWORK, owner=ME).close()
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(StateStoreError, match="another state network"):
        StateStore(path, network=b"\x01" * 32, owner=ME)
    with pytest.raises(StateStoreError, match="another identity"):
        StateStore(path, network=NETWORK, owner=b"\x08" * 32)


def test_one_node_per_database_file(tmp_path) -> None:
    path = tmp_path / "state.sqlite3"
    first = StateStore(path, network=NETWORK, owner=ME)
    try:
        first.next_epoch()
        with pytest.raises(StateStoreError, match="in use"):
            StateStore(path, network=NETWORK, owner=ME)
    finally:
        first.close()
    StateStore(path, network=NETWORK, owner=ME).close()


def test_in_memory_store_works_and_keeps_nothing(identities) -> None:
    store = StateStore(None, network=NETWORK, owner=ME)
    assert not store.persistent
    assert store.next_epoch(minimum=5) == 5
    store.close()
    assert os.path.exists(":memory:") is False
