"""Where the daemon's socket, config and state live (SPEC §11).

Standard library only, because `bgctl` resolves the socket on its hot path.
The locations are platformdirs' for app `bgagents` on Linux (a test checks
that they agree); `BGD_SOCKET`, `BGD_CONFIG_DIR` and `BGD_STATE_DIR` override.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "bgagents"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value) if value else Path.home() / fallback


def runtime_dir() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    base = Path(value) if value else Path(f"/run/user/{os.getuid()}")
    if not value and not base.is_dir():
        # No per-user runtime dir (a container, a cron job): platformdirs falls
        # back the same way.
        import tempfile
        base = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
    return base / APP


def socket_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("BGD_SOCKET", "").strip()
    if env:
        return Path(env)
    return runtime_dir() / "bgd.sock"


def config_dir() -> Path:
    env = os.environ.get("BGD_CONFIG_DIR", "").strip()
    return Path(env) if env else _xdg("XDG_CONFIG_HOME", ".config") / APP


def state_dir() -> Path:
    env = os.environ.get("BGD_STATE_DIR", "").strip()
    return Path(env) if env else _xdg("XDG_STATE_HOME", ".local/state") / APP
