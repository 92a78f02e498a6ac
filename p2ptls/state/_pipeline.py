"""The store-and-sign pipeline of a state node's own writes (trio).

Theory of operation
-------------------
A write (:meth:`WritePipeline.stage`) is staged in the replica core, where reads see it at once,
and wakes the **store** task. The store task writes every pending change (own records, replicas,
certificates, members) in one transaction on a worker thread (group commit) and then tells the
waiters (:meth:`WritePipeline.wait_durable`) and the subscribers that own writes are durable. The
**signer** task waits ``coalesce_delay`` (or ``max_batch`` records), signs one batch with the
epoch's Ed25519 key, and the store task makes the batch durable before the own mark moves and the
batch is offered to members (``published``). A node without a database file commits in place.

When a signature shows our own id used beyond what we published (our store lost history, or a
copy of this node runs), the signer moves to a newer epoch first (recorded durably) and issues
every own key again (``protocol/SPEC-state.md`` §8.3).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import trio

from . import _crypto
from . import _wire as wire
from ._notify import Notifier
from ._replica import ChangeSet, ReplicaCore
from ._store import StateStore, StoredMember
from .config import StateNodeConfig
from .errors import StateStoreError
from .events import StateChanged

log = logging.getLogger("p2ptls.state")


class WritePipeline:
    """Stages, stores, signs and publishes one node's own writes.

    ``published`` is called when own batches became durable and part of the published state
    (the node then offers them to every member).
    """

    def __init__(
        self,
        config: StateNodeConfig,
        store: StateStore,
        core: ReplicaCore,
        notifier: Notifier,
        published: Callable[[], None],
    ) -> None:
        self.config = config
        self._store = store
        self._core = core
        self._notify = notifier
        self._published = published
        self._limiter = trio.CapacityLimiter(1)
        self._store_wake = trio.Event()
        self._sign_wake = trio.Event()
        self._durable_waiters: list[tuple[wire.Version, trio.Event]] = []
        self._pending_local: collections.deque[wire.Record] = collections.deque()
        self._pending_members: dict[bytes, StoredMember | None] = {}
        self._rotate_above: wire.Version | None = None

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._store_loop)
        nursery.start_soon(self._sign_loop)
        self._store_wake.set()  # the new epoch's certificate and any records issued again

    # -- writing -----------------------------------------------------------------------------------

    def stage(self, changes: list[tuple[str, bytes | None]]) -> wire.Version:
        """Stage own writes (reads see them at once); returns the version of the last one."""
        last = wire.NO_VERSION
        for key, value in changes:
            record = self._core.stage(key, value)
            self._pending_local.append(record)
            last = record.version
        self._notify.counters["records_written"] += len(changes)
        self._store_now()
        return last

    async def wait_durable(self, version: wire.Version) -> None:
        if self._core.durable_version >= version:
            await trio.lowlevel.checkpoint()
            return
        done = trio.Event()
        self._durable_waiters.append((version, done))
        await done.wait()

    def save_member(self, peer: bytes, member: StoredMember | None) -> None:
        """Write (or, with ``None``, delete) a member at the next commit."""
        self._pending_members[peer] = member
        self._store_wake.set()

    def wake_store(self) -> None:
        """The replica core changed (received updates): write it at the next commit."""
        self._store_wake.set()

    def check_own(self, proven: wire.Version) -> None:
        """``proven``: a version of our own id that a signature showed (never a mere claim)."""
        if self._core.note_own_proof(proven) and (
            self._rotate_above is None or proven > self._rotate_above
        ):
            self._rotate_above = proven
            self._sign_wake.set()

    # -- storing -----------------------------------------------------------------------------------

    async def _store_loop(self) -> None:
        core = self._core
        while True:
            await self._store_wake.wait()
            self._store_wake = trio.Event()
            changes = core.take_changes()
            members = list(self._pending_members.items())
            self._pending_members = {}
            if changes.empty and not members:
                continue
            await self._apply(changes, members)
            self._committed(changes)

    def _committed(self, changes: ChangeSet) -> None:
        """``changes`` are stored: acknowledge own writes and offer published batches."""
        if changes.durable_through is not None:
            self._note_durable(changes.durable_through)
        if changes.published_through is not None and self._core.publish(changes.published_through):
            self._published()
            self._notify.changed()  # wait_acknowledged waits for publication

    def _store_now(self) -> None:
        """A node without a database file has nothing to write (see :meth:`_apply`): commit
        its own writes and batches in place instead of waking the store task."""
        if self._store.persistent:
            self._store_wake.set()
            return
        self._pending_members = {}
        self._committed(self._core.take_changes())

    async def _apply(
        self, changes: ChangeSet, members: list[tuple[bytes, StoredMember | None]]
    ) -> None:
        """Write one group commit on a worker thread.

        A node without a database file (``database=None``) skips the write: its in-memory store
        is only read once, when the node opens (empty then), so a copy of what the replica core
        holds would cost two thread hops and a transaction per write and be read by nobody.
        Its epoch counter still lives there (``next_epoch``).
        """
        if self._store.persistent:
            await trio.to_thread.run_sync(
                self._store.apply, changes, members, limiter=self._limiter
            )
        else:
            await trio.lowlevel.checkpoint()

    def _note_durable(self, version: wire.Version) -> None:
        self._core.note_durable(version)
        self._sign_wake.set()
        own = self.config.identity.peer_id
        while self._pending_local and self._pending_local[0].version <= version:
            record = self._pending_local.popleft()
            self._notify.emit(
                StateChanged(own, record.key, record.value, record.epoch, record.seq, True)
            )
        still = []
        for waiting, done in self._durable_waiters:
            if waiting <= version:
                done.set()
            else:
                still.append((waiting, done))
        self._durable_waiters = still
        self._notify.changed()

    # -- signing -----------------------------------------------------------------------------------

    async def _sign_loop(self) -> None:
        core = self._core
        config = self.config
        while True:
            await self._sign_wake.wait()
            self._sign_wake = trio.Event()
            if self._rotate_above is not None:
                await self._rotate()
            while core.unsigned_durable:
                if core.unsigned_durable < config.max_batch and config.coalesce_delay > 0:
                    await trio.sleep(config.coalesce_delay)
                if core.sign_pending(config.max_batch) is not None:
                    self._notify.counters["batches_signed"] += 1
                    self._store_now()

    async def _rotate(self) -> None:
        """Our id is held elsewhere at versions we do not have (our store was lost or rolled
        back): write from a new epoch above them, issuing every own record again."""
        seen = self._rotate_above
        assert seen is not None
        self._rotate_above = None
        short = self.config.identity.peer_id.short
        log.warning(
            "%s: other nodes hold our state (signed) at epoch %d; moving to a newer epoch",
            short,
            seen[0],
        )
        try:
            epoch = await trio.to_thread.run_sync(
                self._store.next_epoch,
                max(seen[0], self._core.epoch) + 1,
                limiter=self._limiter,
            )
            signer = await trio.to_thread.run_sync(
                _crypto.EpochSigner.create, self.config.identity, self._core.network, epoch
            )
            self._core.begin_epoch(signer, reissue_all=True)
        except (StateStoreError, ValueError) as exc:
            # Only our own key can prove such an epoch; still, keep writing in the current one.
            log.error("%s: cannot move to a newer epoch: %s", short, exc)
            self._notify.counters["errors_contained"] += 1
            return
        self._store_wake.set()

    async def final_flush(self) -> None:
        """On a clean exit: sign what is durable and write everything pending."""
        core = self._core
        while core.unsigned_durable:
            core.sign_pending(self.config.max_batch)
        changes = core.take_changes()
        members = list(self._pending_members.items())
        if not changes.empty or members:
            await trio.to_thread.run_sync(
                self._store.apply, changes, members, limiter=self._limiter
            )
