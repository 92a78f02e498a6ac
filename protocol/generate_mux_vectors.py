"""Generate the multiplexing known-answer vectors in ``protocol/vectors/mux.json``.

Run from the repository root::

    .venv/bin/python -m protocol.generate_mux_vectors          # (re)write the JSON file
    .venv/bin/python -m protocol.generate_mux_vectors --check  # exit 1 if the file is stale

Every value comes from the reference implementation of ``protocol/SPEC.md`` §14 in
``protocol/mux_reference.py``, which uses nothing from p2ptls: the vectors say what the
specification requires, and ``tests/test_mux_vectors.py`` checks p2ptls against them (a
disagreement is a bug in one of the two, to be decided and reported, never papered over here).

Large payloads are written compactly (:func:`compact`): ``{"fill": byte, "length": n}`` for a
repeated byte, ``{"sha256": ..., "length": n}`` for whole wire data longer than 2 KiB.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python protocol/generate_mux_vectors.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import mux_reference as ref
from protocol.mux_reference import END, FIN, MESSAGE, MuxViolation
from protocol.mux_script import (
    SMALL,
    Script,
    accept,
    data,
    fill,
    frames_of,
    goaway,
    initiator_with_stream,
    open_,
    ping,
    refuse,
    reset,
    responder_with_stream,
    window,
)
from protocol.vector_files import write_or_check

OUTPUT = Path(__file__).resolve().parent / "vectors" / "mux.json"


def id_exchanges() -> list[Script]:
    return [
        Script("initiator_ids", "initiator", "The initiator opens 1, 3; the peer opens 2, 4.")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .receive(accept(1), window(1, 196608))
        .receive(open_(2, "echo/1"))
        .do("accept", stream_id=2)
        .receive(open_(4, "echo/1")),
        Script("responder_ids", "responder", "The responder opens 2, 4; the peer opens 1.")
        .do("open", protocol="chat/1")
        .receive(open_(1, "echo/1"))
        .do("open", protocol="chat/1"),
        Script("open_skips_an_id", "responder", "The first OPEN must be 1.").receive(
            open_(3, "chat/1")
        ),
        Script("open_reuses_an_id", "responder", "An id is never used twice.")
        .receive(open_(1, "chat/1"))
        .receive(open_(1, "chat/1")),
        Script(
            "open_with_own_parity", "responder", "The responder's ids are not the peer's."
        ).receive(open_(2, "chat/1")),
        Script("open_name_with_space", "responder", "A name is visible ASCII.").receive(
            open_(1, b"chat 1")
        ),
        Script("open_name_not_ascii", "responder", "A name is visible ASCII.").receive(
            open_(1, "caf\u00e9/1".encode())
        ),
        Script("data_for_never_opened_stream", "responder", "No OPEN for 1 yet.").receive(
            data(1, b"x")
        ),
        Script("window_for_own_never_opened", "initiator", "We opened 1, not 3.")
        .do("open", protocol="chat/1")
        .receive(window(3, 10)),
        Script("reset_for_peer_never_opened", "initiator", "The peer opened nothing.").receive(
            reset(2, 0)
        ),
        Script("late_frames_dropped", "initiator", "Frames for a refused stream are dropped.")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .receive(refuse(1, 1))
        .receive(data(1, b"late"), window(1, 5), reset(1, 0), accept(1))
        .receive(accept(3)),
        Script("data_before_refusal_dropped", "responder", "The opener's early data is dropped.")
        .receive(open_(1, "nope/1"))
        .do("refuse", stream_id=1, code="UNKNOWN_PROTOCOL")
        .receive(data(1, b"early", FIN))
        .receive(open_(3, "chat/1")),
    ]


def answer_exchanges() -> list[Script]:
    return [
        Script("accept_bytes_and_fins", "responder", "Early data, both FINs, a clean close.")
        .receive(open_(1, "chat/1"), data(1, b"hello"))
        .do("accept", stream_id=1)
        .do("consume", stream_id=1, size=5)
        .do("send", stream_id=1, data=b"world")
        .receive(data(1, b"", FIN))
        .do("finish", stream_id=1)
        .do("close", stream_id=1),
        Script("refusal_codes", "initiator", "Each refusal code.")
        .do("open", protocol="a/1")
        .do("open", protocol="b/1")
        .do("open", protocol="c/1")
        .receive(refuse(1, 1), refuse(3, 2), refuse(5, 3)),
        Script("refuse_unknown_code", "initiator", "REFUSE codes are 1..3.")
        .do("open", protocol="a/1")
        .receive(refuse(1, 0)),
        initiator_with_stream("accept_twice", "A second ACCEPT.").receive(accept(1)),
        responder_with_stream("accept_own_stream", "ACCEPT from the opener.").receive(accept(1)),
        initiator_with_stream("refuse_after_accept", "REFUSE after ACCEPT.").receive(refuse(1, 1)),
        Script("data_before_accept", "initiator", "The acceptor speaks only after ACCEPT.")
        .do("open", protocol="chat/1")
        .receive(data(1, b"x")),
        Script("too_many_streams", "responder", "max_inbound_streams = 2.", max_inbound_streams=2)
        .receive(open_(1, "a/1"), open_(3, "a/1"))
        .do("accept", stream_id=1)
        .do("accept", stream_id=3)
        .receive(open_(5, "a/1"))
        .do("close", stream_id=1)
        .receive(open_(7, "a/1")),
        Script("host_refuses_unknown_protocol", "responder", "No handler for nope/1.")
        .receive(open_(1, "nope/1"))
        .do("refuse", stream_id=1, code="UNKNOWN_PROTOCOL"),
    ]


def end_exchanges() -> list[Script]:
    return [
        responder_with_stream("data_after_fin", "Nothing after FIN.")
        .receive(data(1, b"", FIN))
        .receive(data(1, b"x")),
        responder_with_stream("data_after_reset", "Nothing after RESET.")
        .receive(reset(1, 0))
        .receive(data(1, b"x")),
        responder_with_stream("second_reset", "One RESET per stream.")
        .receive(reset(1, 0))
        .receive(reset(1, 0)),
        initiator_with_stream("reset_codes", "Each RESET code; an unknown one is INTERNAL.")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .receive(accept(3), accept(5), accept(7))
        .receive(reset(1, 0), reset(3, 1), reset(5, 2), reset(7, 9)),
        responder_with_stream("close_before_peer_finished", "FIN, then RESET CANCEL.")
        .do("close", stream_id=1)
        .receive(data(1, b"in flight")),
        responder_with_stream("close_after_peer_finished", "Only FIN.")
        .receive(data(1, b"bye", FIN))
        .do("close", stream_id=1),
        responder_with_stream("reset_crosses_peer_reset", "Our RESET and the peer's cross.")
        .do("reset", stream_id=1, code="CANCEL")
        .receive(reset(1, 0)),
        initiator_with_stream("half_close", "Our FIN; the peer's direction goes on.")
        .do("finish", stream_id=1)
        .receive(data(1, b"late reply"), window(1, 100))
        .receive(data(1, b"", FIN)),
        responder_with_stream("fin_inside_message", "A message cut short is not a clean end.")
        .receive(data(1, b"abc", MESSAGE))
        .receive(data(1, b"", FIN)),
        initiator_with_stream("close_inside_outgoing_message", "RESET, not FIN, mid-message.")
        .do("send", stream_id=1, data=fill(70000), message=True, end=True)
        .do("close", stream_id=1),
        responder_with_stream("empty_data_frame", "An empty DATA frame does nothing.").receive(
            data(1)
        ),
    ]


def flow_exchanges() -> list[Script]:
    return [
        Script("credit_exact_then_over", "responder", "64 KiB before any answer.", **SMALL)
        .receive(open_(1, "chat/1"), data(1, fill(65536)))
        .receive(data(1, b"x")),
        responder_with_stream("grant_at_half_window", "WINDOW at 32768 consumed.", **SMALL)
        .receive(data(1, fill(40000)))
        .do("consume", stream_id=1, size=32767)
        .do("consume", stream_id=1, size=1)
        .receive(data(1, fill(58304)))
        .receive(data(1, b"x")),
        Script("stream_window_grant", "initiator", "OPEN then WINDOW(196608).")
        .do("open", protocol="chat/1")
        .receive(accept(1), *[data(1, fill(65536)) for _ in range(4)])
        .receive(data(1, b"x")),
        initiator_with_stream("sender_waits_for_credit", "Frames of min(credit, 64 KiB).")
        .do("send", stream_id=1, data=fill(70000))
        .do("send", stream_id=1, data=fill(4464))
        .receive(window(1, 1000))
        .do("send", stream_id=1, data=fill(4464))
        .receive(window(1, 100000))
        .do("send", stream_id=1, data=fill(3464), fin=True),
        initiator_with_stream("window_zero", "An increment of 0.").receive(window(1, 0)),
        initiator_with_stream("window_overflow", "Credit up to 2^31 - 1, not beyond.")
        .receive(window(1, ref.MAX_WINDOW - ref.INITIAL_WINDOW))
        .receive(window(1, 1)),
        responder_with_stream("message_credit_held", "Credit waits for unread messages.", **SMALL)
        .receive(data(1, fill(40000), MESSAGE | END))
        .receive(data(1, fill(30000, b"b"), MESSAGE | END))
        .receive(data(1, fill(5000, b"c"), MESSAGE))
        .do("take_message", stream_id=1)
        .do("take_message", stream_id=1)
        .receive(data(1, fill(1000, b"c"), MESSAGE | END)),
        responder_with_stream("message_above_window", "Credit flows within a message.", **SMALL)
        .receive(data(1, fill(65536), MESSAGE))
        .receive(data(1, fill(34464), MESSAGE | END)),
        responder_with_stream("channels_interleave", "Bytes between fragments.").receive(
            data(1, b"ab", MESSAGE), data(1, b"xyz"), data(1, b"cd", MESSAGE | END)
        ),
        responder_with_stream("message_too_large", "max_message_size = 100.", max_message_size=100)
        .receive(data(1, fill(60), MESSAGE))
        .receive(data(1, fill(41), MESSAGE))
        .receive(data(1, b"in flight", MESSAGE | END))
        .receive(reset(1, 0))
        .do("close", stream_id=1),
        responder_with_stream("empty_messages_bounded", "64 bytes each.", budget=(1 << 20, 256))
        .receive(*[data(1, b"", MESSAGE | END) for _ in range(4)])
        .receive(data(1, b"", MESSAGE | END)),
        responder_with_stream("tiny_fragments_bounded", "65 bytes each.", budget=(1 << 20, 1024))
        .receive(*[data(1, b"f", MESSAGE) for _ in range(15)])
        .receive(data(1, b"f", MESSAGE)),
        responder_with_stream(
            "budget_released", "A taken message frees its charge.", budget=(1 << 20, 256)
        )
        .receive(*[data(1, b"", MESSAGE | END) for _ in range(4)])
        .do("take_message", stream_id=1)
        .receive(data(1, b"", MESSAGE | END)),
        responder_with_stream(
            "reset_keeps_unread_messages_charged",
            "A reset stream's finished messages are still read: they stay charged until taken or "
            "the stream is gone; stream 3 finds the budget as full as that.",
            budget=(1 << 20, 256),
        )
        .receive(*[data(1, b"", MESSAGE | END) for _ in range(3)])
        .receive(reset(1, 0))
        .receive(open_(3, "chat/1"))
        .do("accept", stream_id=3)
        .receive(data(3, b"", MESSAGE | END), data(3, b"", MESSAGE | END))
        .do("take_message", stream_id=1)
        .do("close", stream_id=1)
        .do("close", stream_id=3)
        .receive(open_(5, "chat/1"))
        .do("accept", stream_id=5)
        .receive(*[data(5, b"", MESSAGE | END) for _ in range(4)]),
        Script("split_receives", "responder", "Frames arrive in pieces.")
        .receive_raw(open_(1, "chat/1")[:5])
        .receive_raw(open_(1, "chat/1")[5:] + data(1, b"hi")[:11])
        .receive_raw(data(1, b"hi")[11:]),
        responder_with_stream(
            "window_grows_while_the_sender_waits",
            "The peer used all its credit when a grant was due: the window doubles, to its cap.",
            max_window=4 * ref.INITIAL_WINDOW,
            **SMALL,
        )
        .receive(data(1, fill(65536)))
        .do("consume", stream_id=1, size=65536)
        .receive(data(1, fill(65536)), data(1, fill(65536)))
        .do("consume", stream_id=1, size=131072)
        .receive(*[data(1, fill(65536)) for _ in range(4)])
        .do("consume", stream_id=1, size=262144)
        .receive(*[data(1, fill(65536)) for _ in range(4)])
        .do("consume", stream_id=1, size=262144),
        responder_with_stream(
            "window_stays_while_credit_is_left",
            "The peer still held credit when the grant was due: no growth.",
            max_window=4 * ref.INITIAL_WINDOW,
            **SMALL,
        )
        .receive(data(1, fill(40000)))
        .do("consume", stream_id=1, size=40000),
        Script(
            "window_growth_within_the_connection_window",
            "responder",
            "Two streams; the sum of their windows may not pass connection_window.",
            window=ref.INITIAL_WINDOW,
            max_window=4 * ref.INITIAL_WINDOW,
            connection_window=3 * ref.INITIAL_WINDOW,
        )
        .receive(open_(1, "chat/1"), open_(3, "chat/1"))
        .do("accept", stream_id=1)
        .do("accept", stream_id=3)
        .receive(data(1, fill(65536)))
        .do("consume", stream_id=1, size=65536)
        .receive(data(3, fill(65536)))
        .do("consume", stream_id=3, size=65536),
        responder_with_stream("credit_checked_from_header", "Before the payload.", **SMALL)
        .receive(data(1, fill(1000)))
        .receive_raw(data(1, fill(64537))[:10]),
    ]


def control_exchanges() -> list[Script]:
    pings = Script(
        "ping_backlog", "responder", "PONGs pile up.", max_output_backlog=40, peer_reads=False
    )
    for n in range(4):
        pings.receive(ping(bytes([n]) * 8))
    refusals = Script(
        "unknown_protocol_backlog",
        "responder",
        "Refusals pile up.",
        max_output_backlog=40,
        peer_reads=False,
    )
    for n in range(4):
        refusals.receive(open_(2 * n + 1, "nope/1")).do(
            "refuse", stream_id=2 * n + 1, code="UNKNOWN_PROTOCOL"
        )
    refusals.receive(open_(9, "nope/1"))
    own_data = (
        Script(
            "own_data_is_not_a_backlog",
            "responder",
            "Our DATA waiting is not the peer's asking: a PING beside it is answered.",
            max_output_backlog=40,
            peer_reads=False,
        )
        .receive(open_(1, "chat/1"))
        .do("accept", stream_id=1)
        .do("send", stream_id=1, data=fill(100))
        .receive(ping(b"\x05" * 8))
    )
    return [
        Script("ping_pong", "initiator", "PING is answered; PONG is reported.")
        .receive(ping(b"\x01" * 8))
        .receive(ping(b"\x02" * 8, "PONG"))
        .do("ping", payload=b"\x03" * 8),
        pings,
        refusals,
        own_data,
        Script("goaway_received", "initiator", "Our opens above 3 are refused.")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .do("open", protocol="chat/1")
        .receive(accept(1))
        .receive(goaway(3, 2))
        .receive(refuse(5, 3), accept(3))
        .receive(data(1, b"still here")),
        Script("goaway_sent", "responder", "Later OPENs are refused; streams go on.")
        .receive(open_(1, "chat/1"))
        .do("accept", stream_id=1)
        .do("go_away", code="IDLE")
        .receive(open_(3, "chat/1"))
        .receive(data(1, b"x"), data(3, b"late")),
        Script("goaway_nothing_opened", "initiator", "last_stream_id 0.").do(
            "go_away", code="NORMAL"
        ),
        Script("second_goaway", "initiator", "One GOAWAY per side.")
        .receive(goaway(0, 0))
        .receive(goaway(0, 0)),
        Script("goaway_unknown_code", "initiator", "Treated as NORMAL.").receive(goaway(0, 77)),
        Script("open_after_peer_goaway", "initiator", "The peer said it opens nothing more.")
        .receive(goaway(0, 0))
        .receive(open_(2, "chat/1")),
    ]


# -- frames and headers ----------------------------------------------------------------------------


def frame_vectors() -> list[dict[str, Any]]:
    frames = []
    for flags in (0, MESSAGE, MESSAGE | END, FIN, MESSAGE | FIN, MESSAGE | END | FIN):
        frames.append(data(1 + flags, b"payload"[: flags + 1], flags))
    frames.append(data(ref.MAX_STREAM_ID, b""))
    frames += [window(2, n) for n in (1, 196608, ref.MAX_WINDOW)]
    frames += [open_(1, name) for name in ("!", "chat/1", "p2ptls/stream/1", "~" * 128)]
    frames.append(accept(3))
    frames += [refuse(5, code) for code in sorted(ref.REFUSE_CODES)]
    frames += [reset(7, code) for code in sorted(ref.RESET_CODES)]
    frames += [ping(bytes(range(8))), ping(bytes(range(8, 16)), "PONG")]
    frames += [
        goaway(last, code)
        for code, last in zip(sorted(ref.GOAWAY_CODES), (0, 1, 2, 5, 4294967295), strict=True)
    ]
    out = []
    for wire in frames:
        (fields,) = frames_of(wire)
        fields["type_code"] = wire[0]
        fields["bytes"] = wire.hex()
        out.append(fields)
    return out


def header(type_code: int, flags: int, stream_id: int, length: int) -> bytes:
    return ref.HEADER.pack(type_code, flags, stream_id, length)


def header_vectors() -> dict[str, list[dict[str, Any]]]:
    bad = [header(9, 0, 1, 0), header(255, 0, 0, 0)]
    bad += [header(t, 0, 0, n) for t, n in ((0, 1), (1, 4), (2, 6), (3, 0), (4, 1), (5, 1))]
    bad += [header(t, 0, 1, 8 if t < 8 else 5) for t in (6, 7, 8)]
    bad += [header(0, f, 1, 0) for f in (0x08, 0x80, END, END | FIN)]
    bad += [header(0, 0, 1, ref.MAX_DATA_PAYLOAD + 1), header(0, MESSAGE, 1, 0xFFFFFFFF)]
    bad += [header(t, 1, 1, n) for t, n in ((1, 4), (2, 6), (3, 0), (4, 1), (5, 1))]
    bad += [header(t, 1, 0, n) for t, n in ((6, 8), (7, 8), (8, 5))]
    bad += [header(2, 0, 1, 0), header(2, 0, 1, 129)]
    bad += [header(t, 0, 1, n) for t, n in ((1, 3), (1, 5), (3, 1), (4, 0), (4, 2), (5, 0), (5, 2))]
    bad += [header(t, 0, 0, n) for t, n in ((6, 7), (6, 9), (7, 0), (8, 4), (8, 6))]
    good = [header(0, 7, 1, ref.MAX_DATA_PAYLOAD), header(2, 0, 1, 1), header(2, 0, 1, 128)]
    good += [header(0, 0, ref.MAX_STREAM_ID, 0), header(8, 0, 0, 5)]
    rejected = []
    for wire in bad:
        try:
            ref.check_header(wire)
        except MuxViolation as error:
            rejected.append({"header": wire.hex(), "rule": error.args[0]})
        else:
            raise AssertionError(f"header {wire.hex()} passes the reference")
    accepted = []
    for wire in good:
        kind, flags, stream_id, length = ref.check_header(wire)
        fields = {"type": kind, "flags_value": flags, "stream_id": stream_id, "length": length}
        accepted.append({"header": wire.hex(), **fields})
    return {"rejected": rejected, "accepted": accepted}


def build() -> dict[str, Any]:
    scripts = [*id_exchanges(), *answer_exchanges(), *end_exchanges()]
    scripts += [*flow_exchanges(), *control_exchanges()]
    names = [script.record["name"] for script in scripts]
    assert len(set(names)) == len(names), "exchange names must be unique"
    context = b"sllp offer and answer"
    headers = header_vectors()
    return {
        "description": (
            "Multiplexing known answers (protocol/SPEC.md section 14), from the reference "
            "implementation in protocol/mux_reference.py. Exchanges start from a fresh side with "
            "the given settings (the rest default: window 262144, max_inbound_streams 64, "
            "max_message_size 16 MiB, budget [256 MiB, 64 MiB per peer], max_output_backlog "
            "4 MiB); after each step: the frames it sends (unless the peer does not read), what "
            "it reports, the credit it holds per stream it holds, whether it may open; or the "
            "connection error (the exchange ends there)."
        ),
        "constants": {
            "header_size": ref.HEADER_SIZE,
            "max_data_payload": ref.MAX_DATA_PAYLOAD,
            "frame_chunk": ref.FRAME_CHUNK,
            "max_protocol_name": ref.MAX_PROTOCOL_NAME,
            "ping_size": ref.PING_SIZE,
            "max_stream_id": ref.MAX_STREAM_ID,
            "initial_window": ref.INITIAL_WINDOW,
            "max_window": ref.MAX_WINDOW,
            "default_window": ref.DEFAULT_WINDOW,
            "max_output_backlog": ref.DEFAULT_MAX_OUTPUT_BACKLOG,
            "fragment_overhead": ref.FRAGMENT_OVERHEAD,
            "types": {name: code for code, name in enumerate(ref.TYPES)},
            "flags": {name: bit for bit, name in ref.FLAG_NAMES.items()},
            "refuse_codes": {name: code for code, name in ref.REFUSE_CODES.items()},
            "reset_codes": {name: code for code, name in ref.RESET_CODES.items()},
            "goaway_codes": {name: code for code, name in ref.GOAWAY_CODES.items()},
        },
        "frames": frame_vectors(),
        "rejected_headers": headers["rejected"],
        "accepted_headers": headers["accepted"],
        "exchanges": [script.record for script in scripts],
        "keying_material": {
            "stream_id": 7,
            "label": "sllp1 offerer to answerer",
            "context": context.hex(),
            "exporter_context": ref.stream_keying_context(7, context).hex(),
        },
    }


def generate() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return write_or_check({OUTPUT.name: generate()}, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
