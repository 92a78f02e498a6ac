"""The server end of a node's control socket (see :mod:`p2ptls.state.control`): who may
connect, and what each request does to the node."""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import logging
import os
import socket
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from ..._address import format_host_port
from ..._peer_lookup import AmbiguousPeer, PeerLookupError, UnknownPeer, find_peer
from ...identity import PeerId
from ..errors import NotConnected
from ..events import MemberChanged, MemberStatus, StateChanged, SubscriptionOverflowed
from ..node import StateNode
from ._frames import (
    FRAME,
    MAX_RESPONSE,
    ControlError,
    FrameBuffer,
    decode_frame,
    encode_frame,
    max_request_size,
    value_fields,
)

log = logging.getLogger("p2ptls.state.control")

MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 60.0
MAX_WAIT = 3600.0
MAX_SOCKET_PATH = 100
"""Bytes of a socket path (the kernel's limit is 107; a little is kept in reserve)."""
LOOKUP_ERRORS = {UnknownPeer: "not_found", AmbiguousPeer: "ambiguous"}
"""The control error type of a failed owner lookup (any other: ``bad_request``)."""


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
        """The peer a request's ``owner``/``to`` names: this node (absent or ``"self"``), a
        name, or a peer id in hex (whole, or a unique prefix of a known one)."""
        node = self.node
        if value is None or value == "self":
            return node.peer_id
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ControlError("bad_request", "owner is a name or a peer id in hex")
        known = itertools.chain(
            (node.peer_id,), node.owners(), (member.peer_id for member in node.members())
        )
        try:
            return find_peer(value, self.names.items(), known, any_whole_id=True)
        except PeerLookupError as exc:
            raise ControlError(LOOKUP_ERRORS.get(type(exc), "bad_request"), str(exc)) from None

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
        self._frames = FrameBuffer()

    async def frame(self, limit: int) -> bytes | None:
        """The next frame's body; ``None`` at a clean end of the connection."""
        while (data := self._frames.next_frame(limit)) is None:
            chunk = await self._stream.receive_some(max(65536, self._frames.missing))
            if not chunk:
                if self._frames.pending:
                    raise ControlError("bad_request", "truncated frame")
                return None
            self._frames.feed(chunk)
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
    return None if address is None else format_host_port(address)


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
