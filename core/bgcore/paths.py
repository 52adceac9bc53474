"""Where the daemon's socket, config and state live (SPEC §11).

Standard library only, and `socket_file` (a plain string, no `pathlib` import) because `bgctl`
resolves the socket on its hot path; the other functions return `Path`s.
The locations are platformdirs' for app `bgagents` on Linux (a test checks
that they agree); `BGD_SOCKET`, `BGD_CONFIG_DIR` and `BGD_STATE_DIR` override.
"""

from __future__ import annotations

import os

APP = "bgagents"


def socket_file(explicit: str | None = None) -> str:
    """The socket's path as a string: `explicit`, else $BGD_SOCKET, else in the runtime dir."""
    if explicit:
        return explicit
    env = os.environ.get("BGD_SOCKET", "").strip()
    if env:
        return env
    return os.path.join(_runtime_dir(), "bgd.sock")


def socket_path(explicit: str | None = None) -> Path:
    from pathlib import Path
    return Path(socket_file(explicit))


def runtime_dir() -> Path:
    from pathlib import Path
    return Path(_runtime_dir())


def config_dir() -> Path:
    from pathlib import Path
    env = os.environ.get("BGD_CONFIG_DIR", "").strip()
    return Path(env) if env else Path(_xdg("XDG_CONFIG_HOME", ".config"), APP)


def state_dir() -> Path:
    from pathlib import Path
    env = os.environ.get("BGD_STATE_DIR", "").strip()
    return Path(env) if env else Path(_xdg("XDG_STATE_HOME", ".local/state"), APP)


def _xdg(var: str, fallback: str) -> str:
    value = os.environ.get(var, "").strip()
    return value if value else os.path.join(os.path.expanduser("~"), fallback)


def _runtime_dir() -> str:
    value = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    base = value if value else f"/run/user/{os.getuid()}"
    if not value and not os.path.isdir(base):
        # No per-user runtime dir (a container, a cron job): platformdirs falls
        # back the same way.
        import tempfile
        base = os.path.join(tempfile.gettempdir(), f"runtime-{os.getuid()}")
    return os.path.join(base, APP)
