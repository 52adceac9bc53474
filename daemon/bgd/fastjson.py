"""The daemon's JSON: orjson, with the standard library wherever the two could disagree.

The daemon encodes and decodes JSON on every request, agent line, transcript entry and
event, and `json` was a third of its CPU time there; orjson does the same work in a
fraction of it. It is the daemon's alone: bgctl keeps the standard library, because
importing orjson costs several milliseconds of start-up (it imports `dataclasses`).

The output is the codec's wire format (UTF-8, no ASCII escaping, compact separators).
Where orjson would answer differently from `json`, the standard library decides:
- decoding: anything orjson rejects (NaN, 1e400, lone surrogate escapes, a BOM) is
  handed to `json`, which accepts it or raises its own error with its own words; and a
  run of 19+ digits (an integer past 64 bits, which orjson would silently turn into a
  float; -9223372036854775809 has only 19) skips orjson;
- encoding: anything orjson declines (integers past 64 bits, non-string keys, subclasses of
  str/int/dict, dataclasses, datetimes) is encoded by `json`, which encodes it or raises TypeError.
One difference is left: orjson writes NaN and infinities as null (`json` writes the
non-JSON tokens NaN/Infinity), and small floats as 1e-7 rather than 1e-07 (same value).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# No OPT_NON_STR_KEYS: it doubles orjson's cost on every dict, and the rare dict
# with non-string keys is refused by orjson and encoded by `json` below, as before.
_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_LINE_OPTIONS = _OPTIONS | orjson.OPT_APPEND_NEWLINE
# The test for a run of 19 digits, without the regex engine (`\d{19}` took 0.25 ms on a
# 10 KB stored record, about 25x this): map every digit to "0" and everything else to " ",
# then look for 19 "0"s. A str is encoded first (surrogatepass: a lone surrogate is still
# bytes to look at; orjson then refuses it and `json` decides).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_ZEROS = b"0" * 19


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_line(obj: Any) -> bytes:
    """One frame of the wire protocol: compact UTF-8 JSON and a newline."""
    try:
        return orjson.dumps(obj, option=_LINE_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def dumps_text(obj: Any) -> str:
    """JSON as a str (what the store keeps in its TEXT columns)."""
    return dumps(obj).decode()


def loads(data: bytes | str) -> Any:
    """Decode like `json.loads` (same values, same errors), faster."""
    raw = data if isinstance(data, (bytes, bytearray)) else data.encode("utf-8", "surrogatepass")
    plain = _NINETEEN_ZEROS not in raw.translate(_DIGITS_AS_ZERO)
    if plain:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
