"""The stream core's state machines, as data (after h11's ``_state.py``).

Theory of operation
-------------------
Each machine is an enum of states and a table ``{(state, trigger): new_state}``; :func:`advance`
looks a transition up and raises when it is missing. A trigger is either a local call (the
caller's misuse: :class:`~p2ptls._errors.LocalProtocolError`) or the peer's bytes (the protocol's
error: :class:`~p2ptls._errors.HandshakeFailed` during the handshake, else
:class:`~p2ptls._errors.ProtocolError`).

States
------
The handshake, per role (:class:`HandshakeState`)::

    initiator:          IDLE --start--> AWAIT_REPLY --Reply--> KEY_OPERATION
                        --supply_decryption--> ESTABLISHED
    resuming initiator: IDLE --start--> AWAIT_REPLY --ResumeReply--> ESTABLISHED
    responder:          AWAIT_HELLO --Hello--> KEY_OPERATION --supply_decryption--> AWAIT_FINISH
                        --Finish--> ESTABLISHED
                        AWAIT_HELLO --ResumeHello--> AWAIT_FINISH
    any state --an error--> FAILED

(A responder answers a Hello that needs no private-key operation, a copy of one already decrypted
or one with a wrong binder, at once: its connection goes from AWAIT_HELLO to AWAIT_FINISH.)

Once ESTABLISHED, each direction (:class:`DirectionState`)::

    sending:   OPEN --our CLOSE--> CLOSED
    receiving: OPEN --the peer's CLOSE--> CLOSED

The data path does not look these tables up per record: it checks the receiving state once per
read (and after each record that is not DATA).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from ._errors import HandshakeFailed, LocalProtocolError, ProtocolError


class HandshakeState(enum.Enum):
    """Where a connection's handshake stands (the tables below say which states each role uses)."""

    IDLE = "idle"
    AWAIT_HELLO = "awaiting hello"
    AWAIT_REPLY = "awaiting reply"
    KEY_OPERATION = "key operation"
    AWAIT_FINISH = "awaiting finish"
    ESTABLISHED = "established"
    FAILED = "failed"


class DirectionState(enum.Enum):
    """One direction of an established connection."""

    OPEN = "open"
    CLOSED = "closed"


class Trigger(enum.Enum):
    """What moves a machine: a local call or a record from the peer."""

    START = ("start the handshake", True)
    SUPPLY_DECRYPTION = ("supply a decryption", True)
    HELLO = ("a Hello", False)
    RESUME_HELLO = ("a ResumeHello", False)
    REPLY = ("a Reply", False)
    RESUME_REPLY = ("a ResumeReply", False)
    FINISH = ("a Finish", False)
    SEND = ("send", True)
    SEND_CLOSE = ("send a CLOSE", True)
    RECORD = ("a record", False)
    CLOSE = ("a CLOSE record", False)

    def __init__(self, description: str, local: bool) -> None:
        self.description = description
        self.local = local


_H = HandshakeState
_D = DirectionState
_T = Trigger

S = TypeVar("S", HandshakeState, DirectionState)

INITIATOR: Mapping[tuple[HandshakeState, Trigger], HandshakeState] = {
    (_H.IDLE, _T.START): _H.AWAIT_REPLY,
    (_H.AWAIT_REPLY, _T.REPLY): _H.KEY_OPERATION,
    (_H.KEY_OPERATION, _T.SUPPLY_DECRYPTION): _H.ESTABLISHED,
}
RESUMING_INITIATOR: Mapping[tuple[HandshakeState, Trigger], HandshakeState] = {
    (_H.IDLE, _T.START): _H.AWAIT_REPLY,
    (_H.AWAIT_REPLY, _T.RESUME_REPLY): _H.ESTABLISHED,
}
RESPONDER: Mapping[tuple[HandshakeState, Trigger], HandshakeState] = {
    (_H.AWAIT_HELLO, _T.START): _H.AWAIT_HELLO,  # a responder speaks second: nothing to start
    (_H.AWAIT_HELLO, _T.HELLO): _H.KEY_OPERATION,
    (_H.AWAIT_HELLO, _T.RESUME_HELLO): _H.AWAIT_FINISH,
    (_H.KEY_OPERATION, _T.SUPPLY_DECRYPTION): _H.AWAIT_FINISH,
    (_H.AWAIT_FINISH, _T.FINISH): _H.ESTABLISHED,
}
SENDING: Mapping[tuple[DirectionState, Trigger], DirectionState] = {
    (_D.OPEN, _T.SEND): _D.OPEN,
    (_D.OPEN, _T.SEND_CLOSE): _D.CLOSED,
}
RECEIVING: Mapping[tuple[DirectionState, Trigger], DirectionState] = {
    (_D.OPEN, _T.RECORD): _D.OPEN,
    (_D.OPEN, _T.CLOSE): _D.CLOSED,
}


def advance(table: Mapping[tuple[S, Trigger], S], state: S, trigger: Trigger) -> S:
    """The state ``trigger`` moves ``state`` to, by ``table``.

    A missing transition raises :class:`LocalProtocolError` for a local trigger; for the peer's,
    :class:`HandshakeFailed` while a handshake is under way (deliberately generic), else
    :class:`ProtocolError`.
    """
    try:
        return table[state, trigger]
    except KeyError:
        pass
    if trigger.local:
        raise LocalProtocolError(f"cannot {trigger.description} in state {state.name}")
    if isinstance(state, HandshakeState):
        raise HandshakeFailed()
    raise ProtocolError(f"{trigger.description} after the peer's close")


class HandshakeMachine:
    """A handshake role's phase, moved through its table by :meth:`_begin` (the handshake classes
    of :mod:`p2ptls._handshake` inherit it)."""

    transitions: Mapping[tuple[HandshakeState, Trigger], HandshakeState]
    phase: HandshakeState

    def _begin(self, trigger: Trigger) -> HandshakeState:
        """Check that ``trigger`` is allowed now and return the phase it leads to; the phase is
        FAILED until the step sets that one, so a step that raises leaves the machine FAILED."""
        next_phase = advance(self.transitions, self.phase, trigger)
        self.phase = HandshakeState.FAILED
        return next_phase
