"""Finding the peer a person means: by a name, or by its peer id in hex (whole or a prefix).

The one lookup behind ``p2ptls peers remove PEER``, the control socket's ``owner``/``to`` and the
facade's ``node_id`` arguments. The rules, in order:

1. 64 hex digits are a whole peer id and mean that peer, whatever any name says (names may be
   claims made by peers, and a claim must not capture another peer's id);
2. a name given to exactly one peer means that peer; given to several, the lookup is ambiguous;
3. otherwise at least ``min_prefix`` hex digits (any case) are the start of one known peer id.

Every failure is a :class:`PeerLookupError`: :class:`UnknownPeer` (nothing matches),
:class:`AmbiguousPeer` (several match) or :class:`BadPeerReference` (neither a name nor enough
hex digits). Callers map them to their own error types or exit codes.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._errors import P2PTLSError
from .identity import PeerId

MIN_PREFIX = 6
"""The fewest hex digits of a peer id accepted as its prefix."""
PEER_ID_DIGITS = 64
HEX_DIGITS = frozenset("0123456789abcdef")


class PeerLookupError(P2PTLSError, LookupError):
    """No single peer matches what was given."""


class UnknownPeer(PeerLookupError):
    """No known peer has that name or an id starting with those digits."""


class AmbiguousPeer(PeerLookupError):
    """Several peers have that name, or ids starting with those digits."""


class BadPeerReference(PeerLookupError, ValueError):
    """Neither a known name nor a peer id in hex (or too few of its digits)."""


def is_hex(text: str) -> bool:
    """Whether ``text`` is hex digits only (any case; the empty string is not)."""
    return bool(text) and set(text.lower()) <= HEX_DIGITS


def looks_like_peer_id(text: str) -> bool:
    """Whether ``text`` has the form of a whole peer id (64 hex digits, any case)."""
    return len(text) == PEER_ID_DIGITS and is_hex(text)


def find_peer(
    wanted: str,
    names: Iterable[tuple[PeerId, str]],
    known: Iterable[PeerId],
    *,
    min_prefix: int = MIN_PREFIX,
    any_whole_id: bool = False,
) -> PeerId:
    """The one peer ``wanted`` refers to (see the module's rules).

    ``names`` are ``(peer id, name)`` pairs; ``known`` are the peer ids a prefix may match. A
    whole peer id is returned even when it is not among ``known`` if ``any_whole_id`` (a caller
    that may address a peer it does not know yet); otherwise it must be known. Both iterables
    are read at most once, and only when needed.
    """
    if looks_like_peer_id(wanted):
        peer_id = PeerId.from_hex(wanted.lower())
        if any_whole_id or peer_id in set(known):
            return peer_id
        raise UnknownPeer(f"no known peer has the id {peer_id.hex()}")
    named = {peer_id for peer_id, name in names if name == wanted}
    if len(named) > 1:
        shown = ", ".join(sorted(peer_id.short for peer_id in named))
        raise AmbiguousPeer(f"several peers are named {wanted!r} ({shown}); give a peer id")
    if named:
        return named.pop()
    if len(wanted) > PEER_ID_DIGITS or not is_hex(wanted):
        raise BadPeerReference(f"{wanted!r} is neither a known name nor a peer id in hex")
    if len(wanted) < min_prefix:
        raise BadPeerReference(
            f"no peer is named {wanted!r}, and a peer id prefix has at least {min_prefix} digits"
        )
    prefix = wanted.lower()
    found = {peer_id for peer_id in known if peer_id.hex().startswith(prefix)}
    if not found:
        raise UnknownPeer(f"no known peer id starts with {prefix}")
    if len(found) > 1:
        raise AmbiguousPeer(f"several peer ids start with {prefix}; give more digits")
    return found.pop()
