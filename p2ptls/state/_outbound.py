"""What one member session still owes its peer: a sans-IO scheduler of spans.

Theory of operation
-------------------
Per session, :class:`Outbound` keeps a *belief* of what the peer holds per owner (from its digest,
its pulls and what we sent), the pulls we sent and have not seen answered, and the certificates
this session already carried. An owner is *dirty* when we hold more than the belief;
:meth:`Outbound.next_updates` builds one Updates message of about ``budget`` bytes, taking dirty
owners in turn (round robin), so one owner's flood never holds back another's updates.

Bounds: beliefs, outstanding pulls and certificates sent are kept for at most ``max_owners``
owners each; the peer's claims cannot grow them past it, and owners held always find room.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import _wire as wire
from ._owners import Outcome, OwnerId
from ._replica import ReplicaCore
from ._wire import NO_VERSION, Version


class Outbound:
    """What one connection still owes its peer: a sans-IO scheduler of spans.

    ``belief`` is what we think the peer holds per owner (from its digest, its pulls and what we
    sent; an owner missing from its digest counts as ``(0, 0)``, so owners it has never heard of
    reach it too). An owner is *dirty* when we hold more than the belief; :meth:`next_updates`
    builds one Updates message, taking dirty owners in turn (round robin), so one owner's flood
    never holds back another's updates. Certificates are included the first time a connection
    needs them, and again after the peer pulls that owner.
    """

    def __init__(self, core: ReplicaCore, budget: int = 1024 * 1024) -> None:
        self.core = core
        self.budget = budget
        self.belief: dict[OwnerId, Version] = {}
        self.dirty: dict[OwnerId, None] = {}
        self.sent_certs: dict[OwnerId, set[int]] = {}
        """Per owner, the epochs whose certificate this connection already carried."""
        self.pulls_outstanding: dict[OwnerId, Version] = {}
        self.digest_received = False
        """Once the peer's digest arrived, an owner missing from it is one it holds nothing of."""
        self.announced: dict[OwnerId, Version] = {}
        """What our last digest to the peer said."""
        self.max_tracked = core.max_owners
        """Most owners with a belief, with an outstanding pull, or with certificates sent (the
        peer's claims cannot grow any of these past it; owners held always find room)."""

    def _believe(self, owner: OwnerId, version: Version) -> bool:
        """Remember what the peer holds of ``owner``; False if there is no room for it."""
        belief = self.belief
        if owner not in belief and len(belief) >= self.max_tracked:
            held = self.core.owners
            if owner not in held:
                return False
            # Make room for an owner we hold: forget a belief about one we do not.
            stale = next((other for other in belief if other not in held), None)
            if stale is None:
                return False
            del belief[stale]
        belief[owner] = version
        return True

    def note_digest_sent(self, digest: wire.Digest) -> None:
        """We sent ``digest``: the peer pulls every owner where it shows more than it holds."""
        self.announced = dict(digest.entries)

    def note_digest(self, digest: wire.Digest) -> None:
        """The peer's digest: what it holds. Push what it lacks and will not pull."""
        self.digest_received = True
        theirs = dict(digest.entries)
        for owner, version in theirs.items():
            self._believe(owner, max(self.belief.get(owner, NO_VERSION), version))
        for owner in self.core.owners:
            if self.announced.get(owner, NO_VERSION) > theirs.get(owner, NO_VERSION):
                continue  # our digest showed it more: it pulls (no duplicate push)
            self._check(owner)  # e.g. what changed here after our digest went out

    def note_pull(self, pull: wire.Pull) -> None:
        for owner, since in pull.entries:
            if owner not in self.core.owners:
                continue  # nothing to send; a belief about it would only take room
            self._believe(owner, since)
            self.sent_certs.pop(owner, None)
            self._check(owner)

    def note_received(self, outcome: Outcome) -> None:
        for owner, version in outcome.sender_holds.items():
            self._believe(owner, max(self.belief.get(owner, NO_VERSION), version))
            self.pulls_outstanding.pop(owner, None)
        for owner in outcome.advanced:
            self.dirty.pop(owner, None)
            self._check(owner)

    def note_changed(self, owner: OwnerId) -> None:
        """We hold more of ``owner``; push it if we know what the peer holds."""
        self._check(owner)

    def want_pull(self, owner: OwnerId, since: Version) -> bool:
        """Whether a pull of ``owner`` from ``since`` should be sent (not already asked)."""
        if self.pulls_outstanding.get(owner) == since:
            return False
        if owner not in self.pulls_outstanding and len(self.pulls_outstanding) >= self.max_tracked:
            return False
        self.pulls_outstanding[owner] = since
        return True

    def pulls_to_send(
        self, pulls: Iterable[tuple[OwnerId, Version]]
    ) -> list[tuple[OwnerId, Version]]:
        """The pulls a digest asked for, noted as outstanding (within the bound)."""
        sent = []
        for owner, since in pulls:
            if owner in self.pulls_outstanding or len(self.pulls_outstanding) < self.max_tracked:
                self.pulls_outstanding[owner] = since
                sent.append((owner, since))
        return sent

    def _check(self, owner: OwnerId) -> None:
        belief = self.belief.get(owner)
        if belief is None and self.digest_received and owner in self.core.owners:
            belief = NO_VERSION
            self._believe(owner, belief)
        if belief is not None and self.core.mark(owner) > belief:
            self.dirty[owner] = None

    def next_updates(self) -> wire.Updates | None:
        """The next message to send, or ``None`` if the peer is up to date."""
        spans: list[wire.Span] = []
        certificates: list[wire.EpochCertificate] = []
        remaining = self.budget
        for owner in list(self.dirty):
            if remaining <= 0:
                break
            del self.dirty[owner]
            span = self.core.span(owner, self.belief.get(owner, NO_VERSION), remaining)
            if span is None:
                continue
            if owner not in self.sent_certs and len(self.sent_certs) >= self.max_tracked:
                held = self.core.owners
                self.sent_certs = {o: e for o, e in self.sent_certs.items() if o in held}
            sent = self.sent_certs.setdefault(owner, set())
            for group in span.groups:
                if group.batch.epoch not in sent:
                    certificate = self.core.certificate(owner, group.batch.epoch)
                    if certificate is not None:
                        certificates.append(certificate)
                        remaining -= len(certificate.public_key_der) + 600
                    sent.add(group.batch.epoch)
            spans.append(span)
            remaining -= span.encoded_size()
            if self._believe(owner, span.last_version):
                self._check(owner)  # more left: back of the queue
        if not spans:
            return None
        return wire.Updates(tuple(certificates), tuple(spans))
