"""The sans-IO multiplexer: two sides joined by hand, every rule checked without sockets."""

from __future__ import annotations

import pytest

from p2ptls import _mux
from p2ptls import _mux_wire as mw
from p2ptls._errors import MuxError
from p2ptls._fragments import ReassemblyBudget
from p2ptls._mux_wire import Flag, FrameType, GoAwayCode, RefuseCode, ResetCode


class Pair:
    """An initiator and a responder whose output is delivered to each other on request."""

    def __init__(self, **options: object) -> None:
        self.budget = ReassemblyBudget(limit=1 << 30, per_peer_limit=1 << 30)
        self.a = _mux.Multiplexer(initiator=True, budget=self.budget, budget_key="a", **options)  # type: ignore[arg-type]
        self.b = _mux.Multiplexer(initiator=False, budget=self.budget, budget_key="b", **options)  # type: ignore[arg-type]

    def to_b(self) -> list[_mux.MuxEvent]:
        return self.b.receive_data_untrusted(self.a.data_to_send())

    def to_a(self) -> list[_mux.MuxEvent]:
        return self.a.receive_data_untrusted(self.b.data_to_send())

    def open(self, protocol: str = "test/1") -> int:
        stream_id = self.a.open_stream(protocol)
        # Each side grants the window beyond the initial one as it opens or accepts.
        grant = _mux.CreditAvailable(stream_id)
        assert self.to_b() == [_mux.StreamOpened(stream_id, protocol), grant]
        self.b.accept_stream(stream_id)
        assert self.to_a() == [_mux.StreamAccepted(stream_id), grant]
        return stream_id


def frames(data: bytes) -> list[tuple[FrameType, int, int, bytes]]:
    """``(type, flags, stream_id, payload)`` of every frame in ``data``."""
    out = []
    offset = 0
    while offset < len(data):
        frame_type, flags, stream_id, length = mw.parse_header_untrusted(data, offset)
        start = offset + mw.HEADER_SIZE
        out.append((frame_type, flags, stream_id, data[start : start + length]))
        offset = start + length
    return out


# -- opening ---------------------------------------------------------------------------------


def test_initiator_opens_odd_ids_and_responder_even_ones_each_two_apart() -> None:
    pair = Pair()
    assert [pair.a.open_stream("x/1") for _ in range(3)] == [1, 3, 5]
    assert [pair.b.open_stream("x/1") for _ in range(3)] == [2, 4, 6]


def test_an_opened_stream_is_offered_and_accepted() -> None:
    pair = Pair()
    stream_id = pair.open("chat/1")
    assert pair.a.send_credit(stream_id) == _mux.DEFAULT_WINDOW
    assert pair.b.send_credit(stream_id) == _mux.DEFAULT_WINDOW


def test_a_refused_stream_is_reported_with_its_code_and_forgotten() -> None:
    pair = Pair()
    stream_id = pair.a.open_stream("nobody/1")
    pair.to_b()
    pair.b.refuse_stream(stream_id, RefuseCode.UNKNOWN_PROTOCOL)
    assert pair.to_a() == [_mux.OpenRefused(stream_id, RefuseCode.UNKNOWN_PROTOCOL)]
    assert pair.a.stream_count == 0
    assert pair.b.stream_count == 0


def test_streams_beyond_the_inbound_limit_are_refused_without_asking_the_application() -> None:
    pair = Pair(max_inbound_streams=2)
    ids = [pair.a.open_stream("x/1") for _ in range(3)]
    events = [e for e in pair.to_b() if not isinstance(e, _mux.CreditAvailable)]
    assert [type(e) for e in events] == [_mux.StreamOpened, _mux.StreamOpened]
    assert pair.to_a() == [_mux.OpenRefused(ids[2], RefuseCode.TOO_MANY_STREAMS)]
    assert pair.b.inbound_streams == 2


def test_a_closed_inbound_stream_frees_its_place() -> None:
    pair = Pair(max_inbound_streams=1)
    first = pair.open()
    pair.b.close_stream(first)
    pair.to_a()
    pair.a.close_stream(first)
    pair.to_b()
    assert pair.b.inbound_streams == 0
    pair.open()


@pytest.mark.parametrize(
    ("stream_id", "reason"),
    [
        (3, "skips an id"),
        (2, "wrong side"),
        (1 + 2**31 * 2 - 2, "far out of range"),
    ],
)
def test_an_open_with_an_id_out_of_order_or_of_the_wrong_side_is_a_protocol_error(
    stream_id: int, reason: str
) -> None:
    b = _mux.Multiplexer(initiator=False)
    with pytest.raises(MuxError):
        b.receive_data_untrusted(mw.frame(FrameType.OPEN, stream_id, b"x/1"))


def test_a_reused_stream_id_is_a_protocol_error() -> None:
    b = _mux.Multiplexer(initiator=False)
    b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"x/1"))
    with pytest.raises(MuxError):
        b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"x/1"))


def test_a_frame_for_a_stream_never_opened_is_an_error_but_a_late_one_is_dropped() -> None:
    pair = Pair()
    stream_id = pair.open()
    with pytest.raises(MuxError, match="never opened"):
        _mux.Multiplexer(initiator=False).receive_data_untrusted(
            mw.frame(FrameType.WINDOW, 1, (5).to_bytes(4, "big"))
        )
    pair.a.reset_stream(stream_id)
    pair.to_b()
    pair.b.reset_stream(stream_id)  # crossed: already gone on a
    assert pair.to_a() == []  # the late RESET is dropped
    data = mw.frame(FrameType.DATA, stream_id, b"late")
    assert pair.a.receive_data_untrusted(data) == []


def test_protocol_names_are_checked_on_both_sides() -> None:
    with pytest.raises(ValueError, match="visible ASCII"):
        _mux.Multiplexer(initiator=True).open_stream("has space")
    with pytest.raises(ValueError):
        _mux.Multiplexer(initiator=True).open_stream("x" * 129)
    with pytest.raises(ValueError, match="visible ASCII"):  # not sent as "caf?/1"
        _mux.Multiplexer(initiator=True).open_stream("café/1")
    b = _mux.Multiplexer(initiator=False)
    with pytest.raises(MuxError):
        b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"bad\x00name"))
    with pytest.raises(MuxError):
        b.receive_data_untrusted(mw.HEADER.pack(FrameType.OPEN, 0, 1, 0))


# -- data and flow control -------------------------------------------------------------------


def test_bytes_and_messages_travel_on_separate_channels() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.send_data(stream_id, b"bytes")
    pair.a.send_data(stream_id, b"a message", message=True, end=True)
    assert pair.to_b() == [
        _mux.DataReceived(stream_id, b"bytes", False, False),
        _mux.DataReceived(stream_id, b"a message", True, True),
    ]


def test_a_large_message_is_cut_into_frames_and_only_the_last_carries_end() -> None:
    pair = Pair(window=1 << 20)
    stream_id = pair.open()
    message = bytes(range(256)) * 1024  # 256 KiB: four frames
    assert pair.a.send_data(stream_id, message, message=True, end=True) == len(message)
    sent = frames(pair.a.data_to_send())
    assert [len(payload) for *_, payload in sent] == [mw.FRAME_CHUNK] * 4
    assert [flags for _, flags, _, _ in sent] == [Flag.MESSAGE] * 3 + [Flag.MESSAGE | Flag.END]


def test_a_sender_takes_no_more_than_its_credit() -> None:
    pair = Pair()
    stream_id = pair.open()
    taken = pair.a.send_data(stream_id, bytes(_mux.DEFAULT_WINDOW + 100))
    assert taken == _mux.DEFAULT_WINDOW
    assert pair.a.send_credit(stream_id) == 0


def test_credit_comes_back_as_the_reader_consumes() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.send_data(stream_id, bytes(_mux.DEFAULT_WINDOW))
    pair.to_b()
    pair.b.bytes_consumed(stream_id, _mux.DEFAULT_WINDOW // 2 - 1)
    assert pair.to_a() == []  # grants are batched: half a window at a time
    pair.b.bytes_consumed(stream_id, 1)
    assert pair.to_a() == [_mux.CreditAvailable(stream_id)]
    assert pair.a.send_credit(stream_id) == _mux.DEFAULT_WINDOW // 2


def test_a_slow_reader_stops_only_its_own_stream() -> None:
    pair = Pair()
    slow = pair.open("slow/1")
    fast = pair.open("fast/1")
    pair.a.send_data(slow, bytes(_mux.DEFAULT_WINDOW))
    for _ in range(10):
        assert pair.a.send_data(fast, bytes(_mux.DEFAULT_WINDOW)) == _mux.DEFAULT_WINDOW
        pair.to_b()
        pair.b.bytes_consumed(fast, _mux.DEFAULT_WINDOW)
        pair.to_a()
    assert pair.a.send_credit(slow) == 0
    assert pair.a.send_credit(fast) == _mux.DEFAULT_WINDOW


def test_data_past_the_credit_is_a_protocol_error_before_its_payload_is_buffered() -> None:
    b = _mux.Multiplexer(initiator=False)
    b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"x/1"))
    b.accept_stream(1)
    b.data_to_send()
    header = mw.HEADER.pack(FrameType.DATA, 0, 1, _mux.DEFAULT_WINDOW + 1)
    with pytest.raises(MuxError, match="credit"):
        b.receive_data_untrusted(header)  # refused on the header alone


def test_data_past_the_credit_in_several_frames_is_a_protocol_error() -> None:
    b = _mux.Multiplexer(initiator=False)
    b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"x/1"))
    b.accept_stream(1)
    chunk = mw.frame(FrameType.DATA, 1, bytes(mw.FRAME_CHUNK))
    b.receive_data_untrusted(chunk * (_mux.DEFAULT_WINDOW // mw.FRAME_CHUNK))
    with pytest.raises(MuxError, match="credit"):
        b.receive_data_untrusted(mw.frame(FrameType.DATA, 1, b"x"))


def test_the_initial_window_applies_before_the_first_window_frame() -> None:
    b = _mux.Multiplexer(initiator=False)
    b.receive_data_untrusted(mw.frame(FrameType.OPEN, 1, b"x/1"))
    b.accept_stream(1)
    data = mw.frame(FrameType.DATA, 1, bytes(mw.INITIAL_WINDOW))
    b.receive_data_untrusted(data)  # the peer may not have seen our WINDOW yet


def test_credit_beyond_two_to_the_31_is_a_protocol_error() -> None:
    pair = Pair()
    stream_id = pair.open()
    grant = mw.frame(FrameType.WINDOW, stream_id, mw.MAX_WINDOW.to_bytes(4, "big"))
    with pytest.raises(MuxError, match="2"):
        pair.a.receive_data_untrusted(grant)


def test_a_zero_window_increment_is_a_protocol_error() -> None:
    pair = Pair()
    stream_id = pair.open()
    with pytest.raises(MuxError):
        pair.a.receive_data_untrusted(mw.frame(FrameType.WINDOW, stream_id, bytes(4)))


def test_data_on_an_opened_stream_before_the_peer_accepts_it_is_a_protocol_error() -> None:
    a = _mux.Multiplexer(initiator=True)
    stream_id = a.open_stream("x/1")
    with pytest.raises(MuxError, match="not accepted"):
        a.receive_data_untrusted(mw.frame(FrameType.DATA, stream_id, b"early"))


# -- messages and the reassembly budget -------------------------------------------------------


def test_a_message_over_the_limit_resets_only_its_stream() -> None:
    pair = Pair(max_message_size=1000)
    big, other = pair.open(), pair.open()
    pair.a.send_data(big, bytes(1001), message=True, end=True)
    pair.a.send_data(other, b"fine", message=True, end=True)
    events = pair.to_b()
    assert events == [
        _mux.StreamAborted(big, ResetCode.MESSAGE_TOO_LARGE, by_peer=False),
        _mux.DataReceived(other, b"fine", True, True),
    ]
    assert pair.to_a() == [_mux.StreamAborted(big, ResetCode.MESSAGE_TOO_LARGE, by_peer=True)]


def test_message_bytes_are_charged_to_the_budget_until_taken() -> None:
    pair = Pair(window=1 << 20)
    stream_id = pair.open()
    pair.a.send_data(stream_id, bytes(100_000), message=True, end=True)
    pair.to_b()
    assert pair.budget.in_use == 100_000 + 2 * 64  # two frames, each charged its overhead
    pair.b.message_taken(stream_id)
    assert pair.budget.in_use == 0


def test_a_message_larger_than_the_window_still_arrives() -> None:
    pair = Pair()
    stream_id = pair.open()
    message = bytes(3 * _mux.DEFAULT_WINDOW)
    view = memoryview(message)
    received = 0
    while view or not received:
        taken = pair.a.send_data(stream_id, view, message=True, end=True)
        view = view[taken:]
        for event in pair.to_b():
            assert isinstance(event, _mux.DataReceived)
            received += len(event.data)
        pair.to_a()
    assert received == len(message)


def test_unread_messages_hold_their_credit_so_a_slow_message_reader_stops_its_sender() -> None:
    pair = Pair()
    stream_id = pair.open()
    sent = 0
    for _ in range(400):
        sent += pair.a.send_data(stream_id, bytes(1000), message=True, end=True)
        pair.to_b()
        pair.to_a()
    # Unread messages hold their credit until taken (the first gave its back as it arrived,
    # nothing waiting before it, but grants go out half a window at a time).
    assert sent == _mux.DEFAULT_WINDOW
    assert pair.a.send_credit(stream_id) == 0
    pair.b.message_taken(stream_id)
    pair.b.message_taken(stream_id)
    pair.to_a()
    assert pair.a.send_credit(stream_id) == 0  # grants wait for half a window
    for _ in range(200):
        pair.b.message_taken(stream_id)
    pair.to_a()
    assert pair.a.send_credit(stream_id) > 0


def test_a_message_over_the_budget_resets_its_stream() -> None:
    budget = ReassemblyBudget(limit=10_000, per_peer_limit=10_000)
    a = _mux.Multiplexer(initiator=True)
    b = _mux.Multiplexer(initiator=False, budget=budget, budget_key="a")
    stream_id = a.open_stream("x/1")
    b.receive_data_untrusted(a.data_to_send())
    b.accept_stream(stream_id)
    a.receive_data_untrusted(b.data_to_send())
    a.send_data(stream_id, bytes(20_000), message=True, end=True)
    events = b.receive_data_untrusted(a.data_to_send())
    assert _mux.StreamAborted(stream_id, ResetCode.MESSAGE_TOO_LARGE, by_peer=False) in events
    assert budget.in_use == 0


def test_closing_a_stream_releases_what_its_messages_held() -> None:
    pair = Pair(window=1 << 20)
    stream_id = pair.open()
    pair.a.send_data(stream_id, bytes(5000), message=True, end=True)
    pair.a.send_data(stream_id, bytes(5000), message=True)  # half of a second one
    pair.to_b()
    assert pair.budget.in_use > 0
    pair.b.close_stream(stream_id)
    assert pair.budget.in_use == 0


def test_closing_a_stream_releases_the_charge_of_an_empty_fragment() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.b.receive_data_untrusted(mw.HEADER.pack(FrameType.DATA, Flag.MESSAGE, stream_id, 0))
    assert pair.budget.in_use > 0  # the fragment's overhead, with no byte of message
    pair.b.close_stream(stream_id)
    assert pair.budget.in_use == 0


def test_release_all_gives_back_every_charge() -> None:
    pair = Pair(window=1 << 20)
    for stream_id in [pair.open() for _ in range(3)]:
        pair.a.send_data(stream_id, bytes(5000), message=True, end=True)
    pair.to_b()
    pair.b.release_all()
    assert pair.budget.in_use == 0


# -- ending streams --------------------------------------------------------------------------


def test_fin_ends_one_direction_and_the_other_goes_on() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.send_fin(stream_id)
    assert pair.to_b() == [_mux.StreamEnded(stream_id)]
    pair.b.send_data(stream_id, b"reply")
    assert pair.to_a() == [_mux.DataReceived(stream_id, b"reply", False, False)]
    with pytest.raises(RuntimeError, match="finished"):
        pair.a.send_data(stream_id, b"more")


def test_data_after_fin_is_a_protocol_error() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.send_fin(stream_id)
    pair.to_b()
    with pytest.raises(MuxError, match="FIN"):
        pair.b.receive_data_untrusted(mw.frame(FrameType.DATA, stream_id, b"x"))


def test_a_reset_aborts_the_stream_on_the_other_side() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.reset_stream(stream_id, ResetCode.CANCEL)
    assert pair.to_b() == [_mux.StreamAborted(stream_id, ResetCode.CANCEL, by_peer=True)]
    assert pair.b.send_credit(stream_id) == 0


def test_a_second_reset_is_a_protocol_error() -> None:
    pair = Pair()
    stream_id = pair.open()
    reset = mw.frame(FrameType.RESET, stream_id, bytes([ResetCode.CANCEL]))
    pair.b.receive_data_untrusted(reset)
    with pytest.raises(MuxError, match="already reset"):
        pair.b.receive_data_untrusted(reset)


def test_closing_after_both_fins_sends_no_reset() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.send_fin(stream_id)
    pair.b.send_fin(stream_id)
    pair.to_b()
    pair.to_a()
    pair.a.close_stream(stream_id)
    assert pair.a.data_to_send() == b""


def test_closing_before_the_peer_finished_tells_it_to_stop() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.a.close_stream(stream_id)
    assert [frame_type for frame_type, *_ in frames(pair.a.data_to_send())] == [
        FrameType.DATA,  # FIN
        FrameType.RESET,
    ]


# -- connection-level frames -------------------------------------------------------------------


def test_a_ping_is_answered_with_its_payload() -> None:
    pair = Pair()
    pair.a.send_ping(b"12345678")
    assert pair.to_b() == []
    assert pair.to_a() == [_mux.PongReceived(b"12345678")]


def test_a_peer_that_pings_without_reading_is_cut() -> None:
    b = _mux.Multiplexer(initiator=False, max_output_backlog=1000)
    ping = mw.frame(FrameType.PING, 0, bytes(8))
    with pytest.raises(MuxError, match="does not read"):
        b.receive_data_untrusted(ping * 200)


def test_go_away_refuses_new_streams_and_drops_unanswered_opens() -> None:
    pair = Pair()
    accepted = pair.open()
    pending = pair.a.open_stream("x/1")
    pair.b.go_away(GoAwayCode.REPLACED)
    events = pair.to_a()
    assert events[0] == _mux.GoAwayReceived(accepted, GoAwayCode.REPLACED)
    assert events[1] == _mux.OpenRefused(pending, RefuseCode.GOING_AWAY)
    assert not pair.a.can_open()
    assert pair.a.send_credit(accepted) > 0  # accepted streams go on


def test_an_open_after_our_go_away_is_refused() -> None:
    pair = Pair()
    pair.b.go_away()
    stream_id = pair.a.open_stream("x/1")
    assert pair.to_b() == []
    assert pair.to_a()[-1] == _mux.OpenRefused(stream_id, RefuseCode.GOING_AWAY)


def test_a_second_go_away_is_a_protocol_error() -> None:
    a = _mux.Multiplexer(initiator=True)
    go_away = mw.frame(FrameType.GOAWAY, 0, bytes(5))
    a.receive_data_untrusted(go_away)
    with pytest.raises(MuxError):
        a.receive_data_untrusted(go_away)


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        mw.HEADER.pack(9, 0, 1, 0),  # unknown type
        mw.HEADER.pack(FrameType.DATA, 0x8, 1, 0),  # unknown flag
        mw.HEADER.pack(FrameType.DATA, Flag.END, 1, 0),  # END without MESSAGE
        mw.HEADER.pack(FrameType.DATA, 0, 0, 0),  # stream frame on stream 0
        mw.HEADER.pack(FrameType.PING, 0, 1, 8),  # connection frame on a stream
        mw.HEADER.pack(FrameType.WINDOW, 0, 1, 5),  # wrong fixed length
        mw.HEADER.pack(FrameType.ACCEPT, 1, 1, 0),  # flags where none are allowed
        mw.HEADER.pack(FrameType.DATA, 0, 1, mw.MAX_DATA_PAYLOAD + 1),  # too long
        mw.HEADER.pack(FrameType.OPEN, 0, 1, mw.MAX_PROTOCOL_NAME + 1),
    ],
)
def test_a_bad_header_is_refused_before_its_payload(header: bytes) -> None:
    with pytest.raises(MuxError):
        _mux.Multiplexer(initiator=False).receive_data_untrusted(header)


@pytest.mark.parametrize("flag", [0x08, 0x10, 0x80])
def test_a_data_frame_with_an_unknown_flag_on_an_open_stream_is_a_protocol_error(
    flag: int,
) -> None:
    pair = Pair()
    stream_id = pair.open()
    with pytest.raises(MuxError, match="unknown DATA flags"):
        pair.b.receive_data_untrusted(mw.HEADER.pack(FrameType.DATA, flag, stream_id, 1) + b"x")


def test_frames_split_at_every_byte_give_the_same_events() -> None:
    pair = Pair()
    stream_id = pair.a.open_stream("x/1")
    whole = pair.a.data_to_send()
    b = _mux.Multiplexer(initiator=False)
    events: list[_mux.MuxEvent] = []
    for i in range(len(whole)):
        events += b.receive_data_untrusted(whole[i : i + 1])
    assert events == [_mux.StreamOpened(stream_id, "x/1"), _mux.CreditAvailable(stream_id)]


def test_a_window_grows_while_the_sender_waits_and_the_reader_keeps_up() -> None:
    pair = Pair(window=_mux.DEFAULT_WINDOW, max_window=4 * _mux.DEFAULT_WINDOW)
    stream_id = pair.open()
    granted = []
    for _ in range(4):
        credit = pair.a.send_credit(stream_id)
        assert pair.a.send_data(stream_id, bytes(credit)) == credit  # all of it: it then waits
        pair.to_b()
        pair.b.bytes_consumed(stream_id, credit)
        pair.to_a()
        granted.append(pair.a.send_credit(stream_id))
    assert granted == [
        2 * _mux.DEFAULT_WINDOW,
        4 * _mux.DEFAULT_WINDOW,
        4 * _mux.DEFAULT_WINDOW,
        4 * _mux.DEFAULT_WINDOW,
    ]


def test_a_window_does_not_grow_for_a_reader_that_lags_or_a_sender_with_credit_left() -> None:
    pair = Pair(window=_mux.DEFAULT_WINDOW, max_window=4 * _mux.DEFAULT_WINDOW)
    stream_id = pair.open()
    pair.a.send_data(stream_id, bytes(_mux.DEFAULT_WINDOW // 2))  # credit left: no growth
    pair.to_b()
    pair.b.bytes_consumed(stream_id, _mux.DEFAULT_WINDOW // 2)
    pair.to_a()
    assert pair.a.send_credit(stream_id) == _mux.DEFAULT_WINDOW
    pair.a.send_data(stream_id, bytes(_mux.DEFAULT_WINDOW))  # all of it, but nothing is read
    pair.to_b()
    assert pair.to_a() == []
    assert pair.a.send_credit(stream_id) == 0


def test_windows_grow_only_within_the_connection_window() -> None:
    window = _mux.DEFAULT_WINDOW
    pair = Pair(window=window, max_window=8 * window, connection_window=3 * window)
    first, second = pair.open(), pair.open()
    for stream_id in (first, second):
        pair.a.send_data(stream_id, bytes(window))
        pair.to_b()
        pair.b.bytes_consumed(stream_id, window)
        pair.to_a()
    assert pair.a.send_credit(first) == 2 * window  # grew: the sum became 3 windows
    assert pair.a.send_credit(second) == window  # could not grow
    pair.b.close_stream(first)  # its window leaves the sum
    pair.to_a()
    pair.a.send_data(second, bytes(window))
    pair.to_b()
    pair.b.bytes_consumed(second, window)
    pair.to_a()
    assert pair.a.send_credit(second) == 2 * window
