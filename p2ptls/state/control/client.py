"""A blocking client of a node's control socket (``p2ptls node put/get/...`` and scripts).

The protocol is described in :mod:`p2ptls.state.control`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._frames import MAX_RESPONSE, ControlError, FrameBuffer, decode_frame, encode_frame


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
        self._frames = FrameBuffer()

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
            while (data := self._frames.next_frame(MAX_RESPONSE)) is None:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ControlError("unavailable", "the node closed the connection")
                self._frames.feed(chunk)
        except ControlError as exc:
            if exc.kind == "too_large":
                raise ControlError("protocol", "answer too large") from None
            raise
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


__all__ = ["ControlClient", "wait_for_socket"]
