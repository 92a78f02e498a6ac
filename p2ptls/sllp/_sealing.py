"""Sealing a batch of SLLP datagrams back to back into one buffer (sans-IO).

Theory of operation
-------------------
:class:`TrainSealer` is the send half of :class:`~p2ptls.sllp._session.Session` for one batch:
the session lays out each datagram's body (body header and payload, ``protocol/SPEC-sllp.md``)
and hands it to :meth:`TrainSealer.seal`, which writes the datagram header, encrypts the body
after it with the epoch's key (moving to the next epoch when the current one is used up) and
takes the next sequence number. The buffer is new for each batch, or a :class:`SendBuffer` that a
caller which sends each batch before sealing the next (the channel) reuses, saving the allocation
and page faults of a fresh buffer per frame. As datagrams are written it cuts the buffer into
:class:`~p2ptls.sllp._datagrams.DatagramTrain` runs of equal-sized datagrams, a shorter datagram
ending its run, so that one segmentation-offload call can carry each run.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _wire as wire
from ._datagrams import DatagramTrain, datagram_train, encrypter
from ._keys import EpochKeys

_HEADER_PACK_INTO = wire.HEADER.pack_into
_HEADER_SIZE = wire.HEADER_SIZE
_TAG_SIZE = wire.TAG_SIZE
_VERSION = wire.VERSION


class SendBuffer:
    """One buffer for batch after batch: valid for a batch until the next one is sealed into it."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (the same one as last time if it is large
        enough; otherwise a new one, so that views of the old one stay valid)."""
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        return self._buffer


class TrainSealer:
    """Seals datagrams one after another into ``out`` and cuts it into trains.

    Args:
      out: the buffer, at least as large as every datagram of the batch together.
      keys: the current send epoch's keys.
      left_in_epoch: datagrams the epoch may still seal.
      rekey: moves the session to its next send epoch and returns its keys.
      rekey_after: datagrams per epoch.
      remote_cid: the peer's connection id, in every header.
      sequence: the first datagram's sequence number.
    """

    __slots__ = (
        "_encrypt_into",
        "_flags",
        "_iv",
        "_out",
        "_out_view",
        "_rekey",
        "_rekey_after",
        "_remote_cid",
        "_run_segment",
        "_run_start",
        "_trains",
        "left_in_epoch",
        "position",
        "sequence",
    )

    def __init__(
        self,
        out: bytearray,
        keys: EpochKeys,
        *,
        left_in_epoch: int,
        rekey: Callable[[], EpochKeys],
        rekey_after: int,
        remote_cid: int,
        sequence: int,
    ) -> None:
        self._out = out
        self._out_view = memoryview(out)
        self._use(keys)
        self._rekey = rekey
        self._rekey_after = rekey_after
        self._remote_cid = remote_cid
        self.left_in_epoch = left_in_epoch
        self.sequence = sequence
        self.position = 0
        self._trains: list[DatagramTrain] = []
        self._run_start = 0
        self._run_segment = 0  # 0: no run open

    def _use(self, keys: EpochKeys) -> None:
        self._encrypt_into = encrypter(keys.aead)
        self._iv = keys.iv
        self._flags = keys.phase

    def seal(self, body: memoryview) -> None:
        """Write the next datagram: a header, then ``body`` encrypted (it may be reused after)."""
        if not self.left_in_epoch:
            self._use(self._rekey())
            self.left_in_epoch = self._rekey_after
        self.left_in_epoch -= 1
        position = self.position
        sequence = self.sequence
        out = self._out_view
        _HEADER_PACK_INTO(self._out, position, _VERSION, self._flags, self._remote_cid, sequence)
        body_start = position + _HEADER_SIZE
        after = body_start + len(body) + _TAG_SIZE
        self._encrypt_into(
            (self._iv ^ sequence).to_bytes(12, "big"),
            body,
            out[position:body_start],
            out[body_start:after],
        )
        self.sequence = sequence + 1
        self.position = after
        length = after - position
        run = self._run_segment
        if length != run:
            if length < run:  # a shorter datagram ends its run
                self._trains.append(datagram_train(out, self._run_start, after, run))
                self._run_start, self._run_segment = after, 0
            else:
                if run:
                    self._trains.append(datagram_train(out, self._run_start, position, run))
                self._run_start, self._run_segment = position, length

    def trains(self) -> list[DatagramTrain]:
        """The batch as trains (the run still open ends here)."""
        trains = self._trains
        if self._run_segment:
            trains.append(
                datagram_train(self._out_view, self._run_start, self.position, self._run_segment)
            )
            self._run_segment = 0
        if len(trains) == 1 and self.position == len(self._out):
            trains[0].data = self._out  # the common case: the train is the whole buffer
        return trains
