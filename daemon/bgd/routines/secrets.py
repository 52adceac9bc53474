"""A run's env_file: read when the run starts, passed to the agent, kept in memory only, and masked
(`***`) in everything the run's session keeps, as CI systems mask their secrets.

Values shorter than MIN_MASKED characters are passed but not masked: they could not be told apart
from ordinary text (masking a `1` would mask every 1 of the transcript). docs/routines.md says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bgcore.routines_file import read_env_text

MASK = "***"
MIN_MASKED = 4


class EnvFileError(Exception):
    """An env_file that cannot be used; the message never holds a value."""


def read_env_file(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnvFileError(f"env_file {path} does not exist; create it (KEY=VALUE lines) or fix "
                           "environment.env_file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"cannot read env_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return read_env_text(text, path)
    except ValueError as exc:
        raise EnvFileError(str(exc)) from None


class Masker:
    """Replaces every secret value in strings, lists and dicts (keys are kept) with `***`."""

    def __init__(self, values):
        # Longest first, so a secret that contains another is masked whole.
        self.values = sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_MASKED},
                             key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        return value


def shown(values: dict[str, str]) -> dict[str, str]:
    """What `routine show` prints of an env_file: its keys, every value as `***`."""
    return dict.fromkeys(values, MASK)
