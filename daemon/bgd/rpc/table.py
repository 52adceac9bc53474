"""The method table: one entry per JSON-RPC method, and parameter checks.

Handlers are `handler(daemon, params, conn)` registered with
`@method("namespace.verb")`; one module per namespace lives in `methods/`.
A handler that needs to wait is `async def`; one that only reads or changes
the daemon's state at once is a plain `def`, which saves a coroutine per call.
docs/protocol.md documents every name registered here (a test compares them).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from bgcore.jsonrpc import INVALID_PARAMS, RpcError

Handler = Callable[[Any, "Params", Any], "Awaitable[Any] | Any"]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    summary: str
    is_async: bool


METHODS: dict[str, Method] = {}


def method(name: str):
    def register(fn: Handler) -> Handler:
        doc = (fn.__doc__ or "").strip().splitlines()
        METHODS[name] = Method(name, fn, doc[0] if doc else "", inspect.iscoroutinefunction(fn))
        return fn
    return register


class Params:
    """Typed access to a request's params, with clear -32602 errors."""

    def __init__(self, raw: Any):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise RpcError(INVALID_PARAMS, "params must be an object with named fields")
        self.raw = raw

    def _get(self, key: str, kinds: tuple, label: str, required: bool, default: Any) -> Any:
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise RpcError(INVALID_PARAMS, f"missing param {key!r} ({label})")
            return default
        value = self.raw[key]
        if isinstance(value, bool) and bool not in kinds:
            raise RpcError(INVALID_PARAMS, f"param {key!r} must be {label}, not {value!r}")
        if not isinstance(value, kinds):
            raise RpcError(INVALID_PARAMS, f"param {key!r} must be {label}, not {type(value).__name__}")
        return value

    def str(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, (str,), "a string", required, default)

    def req_str(self, key: str) -> str:
        return self._get(key, (str,), "a string", True, None)

    def int(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, (int,), "an integer", required, default)

    def num(self, key: str, default: Any = None) -> Any:
        return self._get(key, (int, float), "a number", False, default)

    def bool(self, key: str, default: bool = False) -> bool:
        return self._get(key, (bool,), "true or false", False, default)

    def list(self, key: str, default: Any = None) -> Any:
        return self._get(key, (list,), "an array", False, default)

    def dict(self, key: str, default: Any = None) -> Any:
        return self._get(key, (dict,), "an object", False, default)
