"""The local control socket of a running state node (what ``p2ptls node put/get/...`` talk to).

Theory of operation
-------------------
``p2ptls node run`` serves a Unix stream socket that only the user running the node can open:

* the socket's directory must be owned by that user with mode 0700 (it is created so; an existing
  directory with looser permissions or another owner is refused), the socket file is 0600, and
* every accepted connection's peer credentials (``SO_PEERCRED``) must show the same uid; any
  other connection is closed unanswered.

Requests and responses are frames: a 4-byte big-endian length, then that many bytes of a UTF-8
JSON object. A request is ``{"op": NAME, ...arguments}``; the answer is ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": {"type": TYPE, "message": TEXT}}`` with ``TYPE`` one of
:data:`ERROR_TYPES`. One connection carries any number of requests, one at a time; ``watch``
turns the connection into a stream of ``{"ok": true, "event": {...}}`` frames (after a first
``{"ok": true, "result": {"watching": true}}``) until either side closes it. Requests are at most
``max_request`` bytes (about four times the node's ``max_value_size``), responses at most
:data:`MAX_RESPONSE`, connections at most :data:`MAX_CONNECTIONS` at once, and a request must
arrive within :data:`REQUEST_TIMEOUT` seconds of the previous answer.

Values travel as ``"value"`` (text, UTF-8) or ``"value_b64"`` (any bytes, base64); answers carry
``value`` (``null`` if the bytes are not UTF-8) and ``value_b64``. Owners are peer ids in hex; a
request may give a unique prefix of at least six digits of a known owner or member, or a name:
this node's own, or one of the names in its peer records (the ``names`` the server was given,
e.g. those of its bootstrap records). Names are local labels, never sent by a peer: answers carry
them (``name``) for display only.

Modules: ``_frames`` (frames, errors and values: what both ends share, sans-IO),
:mod:`.server` (:class:`ControlServer`) and :mod:`.client` (:class:`ControlClient`). Import the
names from ``p2ptls.state.control``.
"""

from __future__ import annotations

from ._frames import (
    ERROR_TYPES,
    FRAME,
    MAX_RESPONSE,
    ControlError,
    decode_frame,
    encode_frame,
    max_request_size,
    value_fields,
)
from .client import ControlClient, wait_for_socket
from .server import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    ControlServer,
    check_socket_dir,
    peer_credentials,
)

__all__ = [
    "ERROR_TYPES",
    "FRAME",
    "MAX_CONNECTIONS",
    "MAX_RESPONSE",
    "REQUEST_TIMEOUT",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "check_socket_dir",
    "decode_frame",
    "encode_frame",
    "max_request_size",
    "peer_credentials",
    "value_fields",
    "wait_for_socket",
]
