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
request may give a unique prefix of at least :data:`MIN_PREFIX` digits, or a name: this node's
own, or one of the names in its peer records (the ``names`` the server was given, e.g. those of
its bootstrap records). Names are local labels, never sent by a peer: answers carry them
(``name``) for display only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from ..identity import PeerId
from .errors import NotConnected, StateError
from .events import MemberChanged, MemberStatus, StateChanged, SubscriptionOverflowed
from .node import StateNode

log = logging.getLogger("p2ptls.state.control")

FRAME = struct.Struct(">I")
MAX_RESPONSE = 64 * 1024 * 1024
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 60.0
MAX_WAIT = 3600.0
MIN_PREFIX = 6
MAX_SOCKET_PATH = 100
"""Bytes of a socket path (the kernel's limit is 107; a little is kept in reserve)."""

ERROR_TYPES = (
    "bad_request",
    "not_found",
    "ambiguous",
    "too_large",
    "timeout",
    "not_connected",
    "busy",
    "overflowed",
    "internal",
)
"""The typed errors a response may carry."""


class ControlError(StateError):
    """A control request failed; ``kind`` is one of :data:`ERROR_TYPES` (or ``"unavailable"``
    when the socket cannot be reached, ``"protocol"`` when the answer is malformed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind, "message": str(self)}


def max_request_size(max_value_size: int) -> int:
    """The largest request a node accepts: a value as base64 or escaped JSON text, plus room."""
    return 4 * max_value_size + 64 * 1024


# -- helpers shared by both ends -------------------------------------------------------------------


def encode_frame(obj: Any) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return FRAME.pack(len(data)) + data


def decode_frame(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("bad_request", "a frame is a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise ControlError("bad_request", "a frame is a UTF-8 JSON object")
    return obj


def value_fields(value: bytes | None) -> dict[str, Any]:
    """``value`` (text or ``None``) and ``value_b64`` of some bytes."""
    if value is None:
        return {"value": None, "value_b64": None}
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": text, "value_b64": base64.b64encode(value).decode("ascii")}


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        raise ControlError("internal", "this platform cannot check a socket peer's credentials")
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def check_socket_dir(directory: Path, *, create: bool) -> None:
    """The socket's directory must be ours and mode 0700 (created so when ``create``)."""
    if create and not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        raise ControlError("bad_request", f"{str(directory)!r} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError("bad_request", f"{str(directory)!r} is not a directory")
    if info.st_uid != os.getuid():
        raise ControlError("bad_request", f"{str(directory)!r} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ControlError(
            "bad_request",
            f"control socket directory {str(directory)!r} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 700 {str(directory)!r}",
        )


# -- the server --------------------------------------------------------------------------------


class ControlServer:
    """Serves one node's control socket. Run with :meth:`serve` (``nursery.start``)."""

    def __init__(
        self,
        node: StateNode,
        path: str | os.PathLike[str],
        names: Mapping[PeerId, str] | None = None,
    ) -> None:
        self.node = node
        self.path = Path(path)
        self.names: dict[PeerId, str] = {
            record.peer_id: record.name for record in node.config.bootstrap if record.name
        }
        """Local labels of peers (the node's bootstrap records' names, then ``names``)."""
        self.names.update(names or {})
        if node.config.name:
            self.names[node.peer_id] = node.config.name
        self.max_request = max_request_size(node.config.max_value_size)
        self.refused = 0
        """Connections closed because their peer was another user."""
        self._active = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the socket, report started, and serve until cancelled; removes the socket."""
        listener = await self._listen()
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._connection, stream)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _listen(self) -> trio.SocketListener:
        path = self.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ControlError(
                "bad_request", f"control socket path {str(path)!r} is too long for a Unix socket"
            )
        check_socket_dir(path.parent, create=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ControlError("bad_request", f"{str(path)!r} exists and is not a socket")
            if _socket_answers(path):
                raise ControlError("busy", f"another node serves {str(path)!r}")
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(os.fspath(path))
            os.chmod(path, 0o600)
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                _pid, uid, _gid = peer_credentials(stream.socket)
            except (OSError, ControlError):
                uid = -1
            if uid != os.getuid():
                self.refused += 1
                return
            if self._active >= MAX_CONNECTIONS:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(
                        encode_frame(
                            {"ok": False, "error": ControlError("busy", "too many").to_dict()}
                        )
                    )
                return
            self._active += 1
            try:
                await self._requests(stream)
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            except* Exception:
                # A bug reached by one client must not end the node: log it, drop the client.
                log.exception("control connection failed")
            finally:
                self._active -= 1

    async def _requests(self, stream: trio.SocketStream) -> None:
        reader = _FrameReader(stream)
        while True:
            data: bytes | None = None
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    data = await reader.frame(self.max_request)
                except ControlError as exc:
                    await stream.send_all(encode_frame({"ok": False, "error": exc.to_dict()}))
                    return
            if data is None:
                return  # the client closed the connection, or was idle too long
            try:
                request = decode_frame(data)
                op = request.get("op")
                if op == "watch":
                    await self._watch(stream, request)
                    return
                result = await self._dispatch(op, request)
                answer: dict[str, Any] = {"ok": True, "result": result}
            except ControlError as exc:
                answer = {"ok": False, "error": exc.to_dict()}
            except Exception as exc:  # a bug must not end the node: report it to the caller
                answer = {"ok": False, "error": {"type": "internal", "message": repr(exc)}}
            frame = encode_frame(answer)
            if len(frame) - FRAME.size > MAX_RESPONSE:
                frame = encode_frame(
                    {"ok": False, "error": {"type": "too_large", "message": "answer too large"}}
                )
            await stream.send_all(frame)

    async def _dispatch(self, op: object, request: dict[str, Any]) -> Any:
        node = self.node
        if op == "put":
            key = _key(request)
            value = _value(request)
            try:
                await node.set(key, value)
            except ValueError as exc:
                raise ControlError("too_large", str(exc)) from None
            record = node.record(node.peer_id, key)
            assert record is not None
            return {"key": key, "epoch": record.epoch, "sequence": record.sequence}
        if op == "delete":
            key = _key(request)
            await node.delete(key)
            return {"key": key}
        if op == "get":
            return await self._get(request)
        if op == "peers":
            return self._peers()
        if op == "consensus":
            return self._consensus(_key(request))
        if op == "info":
            return {
                "peer_id": node.peer_id.hex(),
                "name": node.config.name,
                "address": _address(node.address),
                "epoch": node.epoch,
                "record": node.peer_record().to_dict(),
            }
        if op == "send":
            target = self._owner(request.get("to"))
            try:
                await node.send_to(target, _value(request))
            except NotConnected as exc:
                raise ControlError("not_connected", str(exc)) from None
            except ValueError as exc:
                raise ControlError("too_large", str(exc)) from None
            return {"to": target.hex()}
        raise ControlError("bad_request", f"unknown op {op!r}")

    async def _get(self, request: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        key = _key(request)
        owner = self._owner(request.get("owner"))
        wait = request.get("wait", 0)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT:
            raise ControlError("bad_request", f"wait is a number of seconds in 0..{MAX_WAIT:g}")
        if wait and node.get(owner, key) is None:
            with trio.move_on_after(wait):
                await node.wait_until(lambda: node.get(owner, key) is not None)
        record = node.record(owner, key)
        if record is None or record.value is None:
            label = self.names.get(owner) or owner.short
            raise ControlError("not_found", f"{label} has no key {key!r}")
        member = node.member(owner)
        return {
            "owner": owner.hex(),
            "key": key,
            **value_fields(record.value),
            "epoch": record.epoch,
            "sequence": record.sequence,
            "stale": member.stale if member is not None else False,
        }

    def _peers(self) -> dict[str, Any]:
        node = self.node
        return {
            "self": {
                "peer_id": node.peer_id.hex(),
                "name": node.config.name,
                "address": _address(node.address),
                "version": list(node.version(node.peer_id)),
            },
            "members": [self._member(m) for m in node.members()],
        }

    def _consensus(self, key: str) -> dict[str, Any]:
        node = self.node
        entries = []
        for entry in node.consensus(key):
            stale = []
            for owner in entry.owners:
                member = node.member(owner)
                if member is not None and member.stale:
                    stale.append(owner.hex())
            entries.append(
                {
                    **value_fields(entry.value),
                    "count": entry.count,
                    "owners": [o.hex() for o in entry.owners],
                    "stale": stale,
                }
            )
        names = {
            owner: self.names[PeerId.from_hex(owner)]
            for entry in entries
            for owner in entry["owners"]
            if PeerId.from_hex(owner) in self.names
        }
        return {"key": key, "entries": entries, "names": names}

    async def _watch(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        node = self.node
        owner_arg = request.get("owner")
        owner = self._owner(owner_arg) if owner_arg is not None else None
        key = request.get("key")
        if key is not None and not isinstance(key, str):
            raise ControlError("bad_request", "key must be a string")
        members = bool(request.get("members", False))
        types: tuple[type, ...] = (StateChanged, MemberChanged) if members else (StateChanged,)
        events = node.subscribe(*types)
        async with events, trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
            await stream.send_all(encode_frame({"ok": True, "result": {"watching": True}}))
            async for event in events:
                if isinstance(event, SubscriptionOverflowed):
                    error = ControlError("overflowed", "the watcher fell behind; watch again")
                    await stream.send_all(encode_frame({"ok": False, "error": error.to_dict()}))
                    break
                if isinstance(event, StateChanged):
                    if (owner is not None and event.owner != owner) or (
                        key is not None and event.key != key
                    ):
                        continue
                    body: dict[str, Any] = {
                        "type": "changed",
                        "owner": event.owner.hex(),
                        "key": event.key,
                        **value_fields(event.value),
                        "epoch": event.epoch,
                        "sequence": event.sequence,
                        "local": event.local,
                    }
                else:
                    assert isinstance(event, MemberChanged)
                    body = {"type": "member", **self._member(event.status)}
                await stream.send_all(encode_frame({"ok": True, "event": body}))
            nursery.cancel_scope.cancel()

    def _owner(self, value: object) -> PeerId:
        node = self.node
        if value is None or value == "self":
            return node.peer_id
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ControlError("bad_request", "owner is a name or a peer id in hex")
        named = [peer_id for peer_id, name in self.names.items() if name == value]
        if len(named) > 1:
            raise ControlError("ambiguous", f"several peers are named {value!r}; give a peer id")
        if named:
            return named[0]
        text = value.lower()
        if len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
            raise ControlError(
                "bad_request", f"{value!r} is neither a known name nor a peer id in hex"
            )
        if len(text) == 64:
            return PeerId.from_hex(text)
        if len(text) < MIN_PREFIX:
            raise ControlError("bad_request", f"an owner prefix has at least {MIN_PREFIX} digits")
        candidates = {node.peer_id, *node.owners(), *(m.peer_id for m in node.members())}
        found = [c for c in candidates if c.hex().startswith(text)]
        if not found:
            raise ControlError("not_found", f"no known owner starts with {text}")
        if len(found) > 1:
            raise ControlError("ambiguous", f"several owners start with {text}")
        return found[0]

    def _member(self, status: MemberStatus) -> dict[str, Any]:
        return {"name": self.names.get(status.peer_id, ""), **_member(status)}


async def _until_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Watch connections send nothing more: end the watch when the client goes away."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


class _FrameReader:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def frame(self, limit: int) -> bytes | None:
        """The next frame's body; ``None`` at a clean end of the connection."""
        if not await self._fill(FRAME.size):
            if self._buffer:
                raise ControlError("bad_request", "truncated frame")
            return None
        (size,) = FRAME.unpack_from(self._buffer)
        if size > limit:
            raise ControlError("too_large", f"request of {size} bytes exceeds {limit}")
        if not await self._fill(FRAME.size + size):
            raise ControlError("bad_request", "truncated frame")
        data = bytes(self._buffer[FRAME.size : FRAME.size + size])
        del self._buffer[: FRAME.size + size]
        return data


def _key(request: dict[str, Any]) -> str:
    key = request.get("key")
    if not isinstance(key, str):
        raise ControlError("bad_request", "key must be a string")
    if len(key.encode("utf-8", "surrogatepass")) > 256:
        raise ControlError("bad_request", "a key is at most 256 bytes of UTF-8")
    return key


def _value(request: dict[str, Any]) -> bytes:
    if "value_b64" in request and request["value_b64"] is not None:
        raw = request["value_b64"]
        if not isinstance(raw, str):
            raise ControlError("bad_request", "value_b64 must be a base64 string")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ControlError("bad_request", "value_b64 is not valid base64") from None
    value = request.get("value")
    if not isinstance(value, str):
        raise ControlError("bad_request", "value must be a string (or give value_b64)")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ControlError("bad_request", "value is not encodable as UTF-8") from None


def _address(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _member(status: MemberStatus) -> dict[str, Any]:
    return {
        "peer_id": status.peer_id.hex(),
        "address": _address(status.address),
        "state": status.state.value,
        "stale": status.stale,
        "since": status.since,
        "incarnation": status.incarnation,
        "version": list(status.version),
        "handshake_failures": status.handshake_failures,
        "last_handshake_failure": status.last_handshake_failure,
    }


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


# -- the client --------------------------------------------------------------------------------


class ControlClient:
    """A blocking client of a node's control socket (for the command line and scripts).

    Example::

        with ControlClient("run/alice/control.sock") as client:
            client.request("put", key="color", value="blue")
            print(client.request("get", key="color")["value"])
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 30.0) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(os.fspath(self.path))
        except OSError as exc:
            self._sock.close()
            raise ControlError(
                "unavailable", f"no node answers at {str(self.path)!r}: {exc.strerror or exc}"
            ) from None
        self._buffer = bytearray()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, request: dict[str, Any]) -> None:
        try:
            self._sock.sendall(encode_frame(request))
        except OSError as exc:
            raise ControlError("unavailable", f"the node went away: {exc}") from None

    def _receive(self, timeout: float | None = None) -> dict[str, Any]:
        if timeout is not None:
            self._sock.settimeout(timeout)
        try:
            while True:
                if len(self._buffer) >= FRAME.size:
                    (size,) = FRAME.unpack_from(self._buffer)
                    if size > MAX_RESPONSE:
                        raise ControlError("protocol", "answer too large")
                    if len(self._buffer) >= FRAME.size + size:
                        data = bytes(self._buffer[FRAME.size : FRAME.size + size])
                        del self._buffer[: FRAME.size + size]
                        break
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ControlError("unavailable", "the node closed the connection")
                self._buffer += chunk
        except TimeoutError:
            raise ControlError("timeout", "the node did not answer in time") from None
        except OSError as exc:
            raise ControlError("unavailable", f"the node went away: {exc}") from None
        try:
            return decode_frame(data)
        except ControlError:
            raise ControlError("protocol", "malformed answer") from None

    @staticmethod
    def _result(answer: dict[str, Any]) -> Any:
        if answer.get("ok") is True:
            return answer.get("result")
        error = answer.get("error")
        if isinstance(error, dict):
            raise ControlError(str(error.get("type", "internal")), str(error.get("message", "")))
        raise ControlError("protocol", "malformed answer")

    def request(self, op: str, **arguments: Any) -> Any:
        """Send one request and return its result; raises :class:`ControlError` on an error."""
        self._send({"op": op, **arguments})
        return self._result(self._receive())

    def watch(self, **arguments: Any) -> Iterator[dict[str, Any]]:
        """Subscribe (``owner``, ``key``, ``members``) and yield events until the connection
        ends. The generator starts once the node confirmed the subscription."""
        self._send({"op": "watch", **arguments})
        self._result(self._receive())
        return self._events()

    def _events(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                answer = self._receive(timeout=None)
            except ControlError as exc:
                if exc.kind == "unavailable":
                    return
                raise
            event = answer.get("event")
            if answer.get("ok") is not True or not isinstance(event, dict):
                self._result(answer)
                raise ControlError("protocol", "malformed event")
            yield event


def wait_for_socket(path: str | os.PathLike[str], timeout: float = 30.0) -> None:
    """Block until a node answers on ``path`` (for scripts that just started one); raises
    :class:`ControlError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            with ControlClient(path, timeout=max(0.1, deadline - time.monotonic())) as client:
                client.request("info")
                return
        except ControlError as exc:
            if exc.kind != "unavailable" or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
