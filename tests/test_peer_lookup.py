"""The one peer lookup (``p2ptls._peer_lookup.find_peer``) behind ``p2ptls peers remove``, the
control socket's ``owner`` and the facade's ``node_id``: its edge cases, on made-up peer ids.

Two real keys whose ids share six leading hex digits would take millions of tries to find, so an
ambiguous prefix is shown here on ids made from chosen bytes; the commands are tested end to end
in ``test_cli.py``, ``test_state_cli.py`` and ``test_state_facade.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from p2ptls import PeerId
from p2ptls._errors import P2PTLSError
from p2ptls._peer_lookup import (
    MIN_PREFIX,
    AmbiguousPeer,
    BadPeerReference,
    UnknownPeer,
    find_peer,
    looks_like_peer_id,
)


def peer(hex_start: str) -> PeerId:
    return PeerId.from_hex(hex_start + "0" * (64 - len(hex_start)))


ALPHA = peer("abcdef01")
ALPHA_TWIN = peer("abcdef02")  # shares six digits with ALPHA
BETA = peer("12345678")
KNOWN = (ALPHA, ALPHA_TWIN, BETA)


def test_a_name_given_to_one_peer_finds_it() -> None:
    assert find_peer("beta", [(BETA, "beta"), (ALPHA, "alpha")], KNOWN) == BETA


def test_a_name_given_to_two_peers_is_ambiguous() -> None:
    with pytest.raises(AmbiguousPeer, match="several peers are named 'twin'"):
        find_peer("twin", [(ALPHA, "twin"), (BETA, "twin")], KNOWN)
    # The same peer named twice is one peer.
    assert find_peer("twin", [(ALPHA, "twin"), (ALPHA, "twin")], KNOWN) == ALPHA


def test_a_prefix_finds_the_one_known_id_that_starts_with_it() -> None:
    assert find_peer("123456", [], KNOWN) == BETA
    assert find_peer("ABCDEF01", [], KNOWN) == ALPHA  # any case
    with pytest.raises(AmbiguousPeer, match="several peer ids start with abcdef; give more"):
        find_peer("abcdef", [], KNOWN)
    with pytest.raises(UnknownPeer, match="no known peer id starts with 999999"):
        find_peer("999999", [], KNOWN)


def test_too_few_digits_or_no_hex_at_all_is_a_bad_reference() -> None:
    with pytest.raises(BadPeerReference, match=f"at least {MIN_PREFIX} digits"):
        find_peer("12345", [], KNOWN)
    for text in ("carol", "", "12 34 56", "1" * 65, "abcdeg"):
        with pytest.raises(BadPeerReference, match="neither a known name nor a peer id"):
            find_peer(text, [], KNOWN)
    # A caller may ask for whole ids only.
    with pytest.raises(BadPeerReference, match="at least 64 digits"):
        find_peer(ALPHA.hex()[:63], [], KNOWN, min_prefix=64)


def test_a_whole_id_means_that_peer_whatever_names_claim() -> None:
    # A peer claiming another's id as its name does not capture lookups of that id.
    claims = [(BETA, ALPHA.hex())]
    assert find_peer(ALPHA.hex(), claims, KNOWN) == ALPHA
    assert find_peer(ALPHA.hex().upper(), claims, KNOWN) == ALPHA
    stranger = peer("77")
    with pytest.raises(UnknownPeer, match="no known peer has the id"):
        find_peer(stranger.hex(), [], KNOWN)
    assert find_peer(stranger.hex(), [], KNOWN, any_whole_id=True) == stranger


def test_lookup_errors_are_p2ptls_errors_and_lookup_errors() -> None:
    # The command line reports any P2PTLSError as "p2ptls: error: ..." with exit status 1.
    for error in (AmbiguousPeer, UnknownPeer, BadPeerReference):
        assert issubclass(error, P2PTLSError) and issubclass(error, LookupError)


def test_known_ids_are_read_only_when_needed() -> None:
    def never() -> Iterator[PeerId]:
        raise AssertionError("known ids read for a name")
        yield BETA

    assert find_peer("beta", [(BETA, "beta")], never()) == BETA


def test_what_looks_like_a_peer_id() -> None:
    assert looks_like_peer_id("ab" * 32) and looks_like_peer_id("AB" * 32)
    assert not looks_like_peer_id("ab" * 31) and not looks_like_peer_id("zz" * 32)
