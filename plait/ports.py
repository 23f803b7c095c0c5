"""Is a rendezvous port free on this machine? Launchers ask before they start anything, so a
port another job holds is refused in one line instead of a silent wait (docs/design.md, "When
a rank fails"). Torch-free."""

from __future__ import annotations

import socket

from plait.errors import PlaitError


def is_this_host(host: str) -> bool:
    """``host`` names this machine (a loopback address, its name or one of its addresses)."""
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", ""):
        return True
    me = socket.gethostname()
    if host in (me, me.split(".")[0], socket.getfqdn()):
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(me, None)}
        theirs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs) or any(a.startswith("127.") for a in theirs)


def in_use(port: int) -> bool:
    """Another socket listens on ``port`` (any address of this machine). SO_REUSEADDR, as
    torch's TCPStore sets it: a port only in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_free(host: str, port: int, what: str) -> None:
    """Refuse a rendezvous at ``host:port`` that this machine would serve when the port is
    taken; a port on another host is that host's to check."""
    if is_this_host(host) and in_use(port):
        raise PlaitError(
            f"{what}: port {port} on {host} is in use (another job or program listens there); "
            "pick a free port"
        )
