"""Sans-IO codec for newline-delimited JSON-RPC 2.0.

Bytes go in (`FrameReader.receive_data`), parsed messages come out
(`FrameReader.next_frame`); messages go out through `encode`.  Nothing here
touches a socket or a clock, so the trio daemon, the blocking `bgctl` and the
asyncio `bgls` share one implementation, tested without any I/O.

A *frame* is one line.  A frame holds one message or a batch (a JSON array).
Errors are split by whose fault they are: `RemoteProtocolError` means the peer
sent something unusable and carries the JSON-RPC error to answer with;
`RpcError` is what a method handler raises and what a client receives.
"""

from __future__ import annotations

import json

# Annotations only (they are strings here): importing typing would cost bgctl ~2 ms of start-up.
# Type checkers read this block as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Union

MAX_FRAME_BYTES = 1 << 20  # 1 MiB

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Application codes, -32000 and down.  docs/protocol.md documents each one and
# a test keeps that table equal to this one.
FRAME_TOO_LARGE = -32000
NOT_FOUND = -32001
INVALID_STATE = -32002
AGENT_UNAVAILABLE = -32003
BAD_SCHEDULE = -32004
LIMIT_REACHED = -32005
CONFLICT = -32006
PERMISSION_DENIED = -32007
TASKS_FILE_ERROR = -32008
SHUTTING_DOWN = -32009
ROUTINES_FILE_ERROR = -32010

ERROR_NAMES: dict[int, str] = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    FRAME_TOO_LARGE: "frame too large",
    NOT_FOUND: "not found",
    INVALID_STATE: "invalid state",
    AGENT_UNAVAILABLE: "agent unavailable",
    BAD_SCHEDULE: "bad schedule",
    LIMIT_REACHED: "limit reached",
    CONFLICT: "conflict",
    PERMISSION_DENIED: "permission denied",
    TASKS_FILE_ERROR: "tasks file error",
    SHUTTING_DOWN: "shutting down",
    ROUTINES_FILE_ERROR: "routines file error",
}

NEED_DATA = object()
"""Returned by `FrameReader.next_frame` when no complete frame is buffered."""


class RpcError(Exception):
    """An error with its wire code: raised by handlers, received by clients."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_wire(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    @classmethod
    def from_wire(cls, err: Any) -> "RpcError":
        if not isinstance(err, dict):
            return cls(INTERNAL_ERROR, f"malformed error object: {err!r}")
        code = err.get("code")
        return cls(code if isinstance(code, int) else INTERNAL_ERROR,
                   str(err.get("message", "error")), err.get("data"))


class RemoteProtocolError(RpcError):
    """The peer sent bytes that are not a valid message.

    `id` is the request id to answer with (None when unknown); `fatal` says
    the connection must be closed after answering (an oversized frame).
    """

    def __init__(self, code: int, message: str, id: Any = None, fatal: bool = False):
        super().__init__(code, message)
        self.id = id
        self.fatal = fatal


class _Value:
    """Plain value objects (not dataclasses: bgctl's start-up cannot afford `inspect`)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Request(_Value):
    __slots__ = ("method", "params", "id")

    def __init__(self, method: str, params: Any, id: Any):
        self.method, self.params, self.id = method, params, id


class Notification(_Value):
    __slots__ = ("method", "params")

    def __init__(self, method: str, params: Any):
        self.method, self.params = method, params


class Response(_Value):
    __slots__ = ("id", "result", "error")

    def __init__(self, id: Any, result: Any = None, error: "RpcError | None" = None):
        self.id, self.result, self.error = id, result, error


if TYPE_CHECKING:
    Message = Union[Request, Notification, Response]


class Batch(_Value):
    """A frame that held a JSON array: its items in order.

    Invalid items appear as `RemoteProtocolError` instances at their place,
    so a server answers each one as JSON-RPC 2.0 requires.
    """

    __slots__ = ("items",)

    def __init__(self, items: "list[Message | RemoteProtocolError] | None" = None):
        self.items = items if items is not None else []


if TYPE_CHECKING:
    Frame = Union[Message, Batch]


def parse_message(obj: Any) -> Message:
    """Turn one decoded JSON value into a message, or raise RemoteProtocolError."""
    if not isinstance(obj, dict):
        raise RemoteProtocolError(INVALID_REQUEST, "a message must be a JSON object")
    msg_id = obj.get("id")
    if not _valid_id(msg_id):
        raise RemoteProtocolError(INVALID_REQUEST, "id must be a string, a number or null")
    if obj.get("jsonrpc") != "2.0":
        raise RemoteProtocolError(INVALID_REQUEST, 'missing "jsonrpc": "2.0"', id=msg_id)
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise RemoteProtocolError(INVALID_REQUEST, "method must be a non-empty string", id=msg_id)
        params = obj.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            raise RemoteProtocolError(INVALID_REQUEST, "params must be an object or an array", id=msg_id)
        if "id" in obj:
            return Request(method, params, msg_id)
        return Notification(method, params)
    if "result" in obj and "error" not in obj:
        return Response(msg_id, result=obj["result"])
    if "error" in obj and "result" not in obj:
        return Response(msg_id, error=RpcError.from_wire(obj["error"]))
    raise RemoteProtocolError(INVALID_REQUEST, "neither a request nor a response", id=msg_id)


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def parse_frame(line: bytes, loads: Callable[[bytes], Any] = json.loads) -> Frame:
    """Decode one line (without its newline) into a message or a batch.

    `loads` may be a faster decoder with the same results and errors as `json.loads`
    (the daemon passes one built on orjson; clients keep the standard library)."""
    try:
        obj = loads(line)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(PARSE_ERROR, f"not valid JSON: {_short(exc)}") from None
    if isinstance(obj, list):
        if not obj:
            raise RemoteProtocolError(INVALID_REQUEST, "empty batch")
        items: list[Message | RemoteProtocolError] = []
        for item in obj:
            try:
                items.append(parse_message(item))
            except RemoteProtocolError as err:
                items.append(err)
        return Batch(items)
    return parse_message(obj)


class FrameReader:
    """Splits a byte stream into frames, enforcing the frame size limit.

    Feed bytes with `receive_data`; call `next_frame` until it returns
    NEED_DATA.  Blank lines are skipped.  A line over the limit raises a fatal
    RemoteProtocolError (the rest of the stream is unusable: the caller answers
    and closes).  An invalid frame raises a non-fatal one and the reader moves
    on to the next line.  `loads` is passed to `parse_frame`.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES, loads: Callable[[bytes], Any] = json.loads):
        self.max_frame_bytes = max_frame_bytes
        self._loads = loads
        self._buf = bytearray()
        self._scan_from = 0
        self._broken = False
        self.eof = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes; b"" means the peer closed its side."""
        if data:
            self._buf += data
        else:
            self.eof = True

    def next_frame(self) -> Frame | object:
        while True:
            if self._broken:
                return NEED_DATA
            nl = self._buf.find(b"\n", self._scan_from)
            if nl < 0:
                if len(self._buf) > self.max_frame_bytes:
                    self._broken = True
                    raise RemoteProtocolError(
                        FRAME_TOO_LARGE, f"frame larger than {self.max_frame_bytes} bytes", fatal=True)
                self._scan_from = len(self._buf)
                return NEED_DATA
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            self._scan_from = 0
            if len(line) > self.max_frame_bytes:
                self._broken = True
                raise RemoteProtocolError(
                    FRAME_TOO_LARGE, f"frame larger than {self.max_frame_bytes} bytes", fatal=True)
            line = line.strip()
            if not line:
                continue
            return parse_frame(line, self._loads)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame (a half-written line at EOF)."""
        return len(self._buf)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


class Reply(_Value):
    """A response to one of our own requests, with the method it answers."""

    __slots__ = ("id", "method", "result", "error")

    def __init__(self, id: Any, method: str, result: Any = None, error: "RpcError | None" = None):
        self.id, self.method, self.result, self.error = id, method, result, error


class Peer:
    """Both directions of one stream, for protocols where each side calls the other.

    A client of the daemon only sends requests; an ACP agent also sends its own
    (permission requests) while it answers ours (a prompt), and both number
    their requests from 0.  `request` numbers ours and remembers what each one
    asked; `receive` turns one line into messages: the peer's requests and
    notifications as they are, a response as a `Reply` naming the method it
    answers.  A response to no outstanding request of ours is a
    RemoteProtocolError in the list (the stream goes on); a line that is not
    JSON-RPC at all raises one, as `parse_frame` does.
    """

    def __init__(self, loads: Callable[[bytes], Any] = json.loads, first_id: int = 0):
        self._loads = loads
        self._next_id = first_id
        self.outstanding: dict[Any, str] = {}

    def request(self, method: str, params: Any = None) -> dict:
        """A request message with a fresh id, remembered until its response arrives."""
        request_id = self._next_id
        self._next_id += 1
        self.outstanding[request_id] = method
        return request_obj(method, params, request_id)

    def notification(self, method: str, params: Any = None) -> dict:
        return request_obj(method, params)

    def result(self, id: Any, result: Any) -> dict:
        return result_obj(id, result)

    def error(self, id: Any, error: RpcError) -> dict:
        return error_obj(id, error)

    def receive(self, line: bytes) -> "list[Request | Notification | Reply | RemoteProtocolError]":
        frame = parse_frame(line, self._loads)
        items = frame.items if isinstance(frame, Batch) else [frame]
        return [self._match(item) if isinstance(item, Response) else item for item in items]

    def _match(self, response: Response) -> "Reply | RemoteProtocolError":
        method = self.outstanding.pop(response.id, None) if _hashable(response.id) else None
        if method is None:
            return RemoteProtocolError(INVALID_REQUEST, f"a response to no outstanding request (id {response.id!r})")
        return Reply(response.id, method, response.result, response.error)

    def abandon(self, error: RpcError) -> "list[Reply]":
        """Every outstanding request, answered with `error` (the peer went away)."""
        replies = [Reply(id, method, error=error) for id, method in self.outstanding.items()]
        self.outstanding.clear()
        return replies


def _hashable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))


# -- encoding -----------------------------------------------------------------

# One encoder for the process: json.dumps with arguments builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"


def request_obj(method: str, params: Any = None, id: Any = None) -> dict:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        obj["params"] = params
    if id is not None:
        obj["id"] = id
    return obj


def result_obj(id: Any, result: Any) -> dict:
    return {"jsonrpc": "2.0", "id": id, "result": result}


def error_obj(id: Any, error: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": id, "error": error.to_wire()}


def encode(obj: Any) -> bytes:
    """One frame: a message object, or a list of them for a batch."""
    return _dumps(obj)


def encode_request(method: str, params: Any = None, id: Any = None) -> bytes:
    return _dumps(request_obj(method, params, id))


def encode_notification(method: str, params: Any = None) -> bytes:
    return _dumps(request_obj(method, params))


def encode_result(id: Any, result: Any) -> bytes:
    return _dumps(result_obj(id, result))


def encode_error(id: Any, error: RpcError) -> bytes:
    return _dumps(error_obj(id, error))
