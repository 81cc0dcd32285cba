"""systemd's readiness protocol (sd_notify(3)), in the few lines it takes.

A ``Type=notify`` service is "started" only when it sends ``READY=1`` to the datagram
socket named by ``NOTIFY_SOCKET``: for omerofs that is once the kernel has answered
FUSE_INIT, so units ordered after a mount (``After=omerofs-view@….service``) find it
up. Outside systemd the variable is unset and every call is a no-op. No library: the
protocol is one datagram, and python-systemd would need libsystemd headers to build.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``states`` (``READY=1``, ``STATUS=…``, ``STOPPING=1``); True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", address.lstrip("\0"), exc)
        return False
    return True
