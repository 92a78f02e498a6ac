"""The replay-cache vectors (``replay.json``): a scripted sequence of Hellos decided by
:class:`~protocol.record_reference.ReferenceReplayCache` and by p2ptls's ``ReplayGuard``, which
must agree at every step (SPEC.md section 3.5).

The script uses a cache of four binders, two per source and three sources (two IPv4 addresses and
an IPv6 /64) to show the window, copies from another source, fair eviction and the floors per
source; the guard's defaults are checked against the specification's too.
"""

from __future__ import annotations

from p2ptls.trust import ReplayGuard
from protocol.record_reference import (
    MAX_FUTURE_SKEW_NS,
    MAX_RECENT_HELLOS,
    MAX_RECENT_PER_SOURCE,
    REPLAY_WINDOW_NS,
    ReferenceReplayCache,
)
from protocol.vector_inputs import COARSE_NS, Json, fixed_bytes
from protocol.vector_support import require

REPLAY_SCRIPT_WINDOW_S = 600
REPLAY_SCRIPT_CAPACITY = 4
REPLAY_SCRIPT_PER_SOURCE = 2
T = COARSE_NS
W = REPLAY_WINDOW_NS
F = MAX_FUTURE_SKEW_NS
X, Y, Z = "192.0.2.1", "192.0.2.2", "2001:db8::/64"  # sources: IPv4 addresses, an IPv6 /64
# (binder name, timestamp, now, source)
REPLAY_SCRIPT: tuple[tuple[str, int, int, str], ...] = (
    ("A", T, T, X),
    ("A", T, T, X),
    ("A", T, T, Y),  # a copy from another source is answered too
    ("B", T + 1, T, X),
    ("C", T - W - 1, T, X),
    ("C", T + F + 1, T, X),
    ("G", T + F, T, Y),
    ("C", T - W, T, Y),  # the memory is full
    ("D", T + 2, T, X),  # X holds its share: forgets its own A, floor(X) = T
    ("A", T, T, X),  # refused: X's floor
    ("A", T, T, Z),  # from Z it costs a decryption again (it cannot complete); B (X) makes room
    ("E", T + 3, T + 1, Z),  # Y holds the most: G makes room, floor(Y) = T + F
    ("F", T + 1, T + 1, Y),  # Y's own future stamps refuse Y only
    ("H", T + 1, T + 1, X),  # refused: X's floor
    ("F", T + W + 1, T + W + 1, Y),  # C expires; Y held nothing else, its floor goes with it
    ("G", T + F, T + W + 1, Y),  # so G is taken again; A (Z, now outside the window) makes room
    ("J", T + W + F, T + W + 1, X),  # Y holds the most: F makes room, floor(Y) = T + W + 1
    ("K", T + 2, T + W + 1, X),  # X's D makes room and raises floor(X) to T + 2: refused
)


def _replay_binder(name: str) -> bytes:
    return fixed_bytes(f"binder {name}")


def replay_vectors() -> Json:
    reference = ReferenceReplayCache(
        REPLAY_WINDOW_NS, REPLAY_SCRIPT_CAPACITY, REPLAY_SCRIPT_PER_SOURCE
    )
    guard = ReplayGuard(
        window_s=REPLAY_SCRIPT_WINDOW_S,
        max_recent_hellos=REPLAY_SCRIPT_CAPACITY,
        max_recent_per_source=REPLAY_SCRIPT_PER_SOURCE,
    )
    default = ReplayGuard()
    require(default.window_ns == REPLAY_WINDOW_NS, "default replay window")
    require(default.max_future_skew_ns == MAX_FUTURE_SKEW_NS, "default future skew")
    require(default.max_recent_hellos == MAX_RECENT_HELLOS, "default binder memory")
    require(
        default.max_recent_per_source == MAX_RECENT_PER_SOURCE, "default binder memory per source"
    )
    names = {_replay_binder(n): n for n, _, _, _ in REPLAY_SCRIPT}
    steps = []
    for number, (name, ts, now, source) in enumerate(REPLAY_SCRIPT, 1):
        binder = _replay_binder(name)
        outcome, reason = reference.admit(binder, ts, now, source)
        require(
            guard.admit_hello(binder, ts, now, source).value == outcome, f"replay step {number}"
        )
        for held_by in (X, Y, Z):
            require(
                guard.floor_of(held_by) == reference.floors.get(held_by, -1),
                f"replay step {number}: floor of {held_by}",
            )
        steps.append(
            {
                "step": number,
                "binder": name,
                "source": source,
                "timestamp_ns": ts,
                "now_ns": now,
                "outcome": outcome,
                "reason": reason,
                "remembered_after": [[names[b], held_by] for b, _, held_by in reference.entries],
                "floors_after": dict(sorted(reference.floors.items())),
            }
        )
    return {
        "description": "ReplayGuard.admit_hello, the cheap check a responder runs on a Hello "
        "whose binder verified, before its RSA work (SPEC.md section 3.5); timestamp_ns is the "
        "Hello's clear timestamp_s times 10^9, source where its connection came from (IPv4 "
        "address or IPv6 /64). Binder NAME is SHA-256('p2ptls1 test vector binder NAME'). "
        "'refused': no reply; 'new': decrypt C_I; 'seen': a copy, answered from the remembered "
        "decryption (no RSA work once it is known). remembered_after lists [binder, source] in "
        "arrival order; floors_after the floor of each source that has one (others: -1).",
        "defaults": {
            "window_ns": REPLAY_WINDOW_NS,
            "max_future_skew_ns": MAX_FUTURE_SKEW_NS,
            "max_recent_hellos": MAX_RECENT_HELLOS,
            "max_recent_per_source": MAX_RECENT_PER_SOURCE,
        },
        "script": {
            "window_ns": REPLAY_SCRIPT_WINDOW_S * 10**9,
            "max_recent_hellos": REPLAY_SCRIPT_CAPACITY,
            "max_recent_per_source": REPLAY_SCRIPT_PER_SOURCE,
            "binders": {name: binder.hex() for binder, name in names.items()},
            "steps": steps,
        },
    }
