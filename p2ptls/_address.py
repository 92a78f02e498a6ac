"""``host:port`` text, as people write addresses on the command line and in configuration files.

The one parser and the one formatter: ``"192.0.2.10:7401"``, ``"node.example:7401"`` and
``"[2001:db8::1]:7401"`` (an IPv6 host in brackets). Callers wrap the ``ValueError`` in their own
error with their own wording (a click parameter error, a configuration error naming the setting).
"""

from __future__ import annotations

Address = tuple[str, int]
"""``(host, port)``: the form the rest of the package uses."""

MAX_PORT = 65535


def parse_host_port(text: str) -> Address:
    """``(host, port)`` of ``"host:port"`` or ``"[v6 host]:port"``; the port is 0..65535 in
    ASCII digits (0: any free port, where a caller allows it). Raises ``ValueError``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError("expected host:port")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > MAX_PORT:
        raise ValueError(f"the port is a number in 0..{MAX_PORT}")
    return host, int(port)


def format_host_port(address: Address) -> str:
    """``"host:port"``, with an IPv6 host in brackets (what :func:`parse_host_port` reads)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
