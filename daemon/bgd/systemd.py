"""systemd integration: socket activation (LISTEN_FDS) and sd_notify, stdlib only."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def inherited_socket() -> socket.socket | None:
    """The listening Unix socket systemd passed us, if any (and only for this pid)."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return None
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    fd = SD_LISTEN_FDS_START
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def notify(message: str) -> bool:
    """Send an sd_notify message ("READY=1", "STOPPING=1"); False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False
