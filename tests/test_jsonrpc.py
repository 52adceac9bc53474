"""The sans-IO codec: framing, batches, errors, limits; properties over splits and garbage."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgcore import jsonrpc
from bgcore.jsonrpc import (
    FRAME_TOO_LARGE, INVALID_REQUEST, NEED_DATA, PARSE_ERROR, Batch, FrameReader, Notification,
    RemoteProtocolError, Request, Response, RpcError)


def frames(data: bytes, reader: FrameReader | None = None) -> list:
    reader = reader or FrameReader()
    reader.receive_data(data)
    out = []
    while True:
        try:
            frame = reader.next_frame()
        except RemoteProtocolError as err:
            out.append(err)
            if err.fatal:
                return out
            continue
        if frame is NEED_DATA:
            return out
        out.append(frame)


def test_request_notification_response_round_trip():
    data = (jsonrpc.encode_request("session.get", {"id": "abc"}, 1)
            + jsonrpc.encode_notification("event", {"seq": 3})
            + jsonrpc.encode_result(1, {"ok": True})
            + jsonrpc.encode_error(2, RpcError(-32001, "no session")))
    got = frames(data)
    assert got[0] == Request("session.get", {"id": "abc"}, 1)
    assert got[1] == Notification("event", {"seq": 3})
    assert got[2].result == {"ok": True} and got[2].id == 1
    assert isinstance(got[3], Response) and got[3].error.code == -32001 and got[3].error.message == "no session"


def test_half_written_frame_waits_for_the_rest():
    reader = FrameReader()
    reader.receive_data(b'{"jsonrpc":"2.0","method":"a","id":1')
    assert reader.next_frame() is NEED_DATA
    assert reader.pending_bytes > 0
    reader.receive_data(b'}\n')
    assert reader.next_frame() == Request("a", None, 1)


def test_garbage_is_a_parse_error_and_the_stream_goes_on():
    got = frames(b'this is not json\n{"jsonrpc":"2.0","method":"a","id":7}\n')
    assert isinstance(got[0], RemoteProtocolError) and got[0].code == PARSE_ERROR and not got[0].fatal
    assert got[1] == Request("a", None, 7)


@pytest.mark.parametrize("line, code", [
    (b'{"method":"a","id":1}', INVALID_REQUEST),                      # no jsonrpc
    (b'{"jsonrpc":"2.0","method":5,"id":1}', INVALID_REQUEST),        # method not a string
    (b'{"jsonrpc":"2.0","method":"a","params":3,"id":1}', INVALID_REQUEST),
    (b'{"jsonrpc":"2.0","method":"a","id":{"x":1}}', INVALID_REQUEST),  # id not scalar
    (b'[]', INVALID_REQUEST),
    (b'42', INVALID_REQUEST),
    (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
])
def test_invalid_requests(line, code):
    (err,) = frames(line + b"\n")
    assert isinstance(err, RemoteProtocolError) and err.code == code


def test_invalid_request_keeps_its_id_when_readable():
    (err,) = frames(b'{"method":"a","id":9}\n')
    assert err.id == 9


def test_batch_keeps_order_and_marks_invalid_items():
    line = json.dumps([
        {"jsonrpc": "2.0", "method": "a", "id": 1},
        1,
        {"jsonrpc": "2.0", "method": "b"},
    ]).encode() + b"\n"
    (batch,) = frames(line)
    assert isinstance(batch, Batch)
    assert batch.items[0] == Request("a", None, 1)
    assert isinstance(batch.items[1], RemoteProtocolError)
    assert batch.items[2] == Notification("b", None)


def test_oversized_frame_is_fatal_even_before_its_newline():
    reader = FrameReader(max_frame_bytes=100)
    got = frames(b"x" * 150, reader)
    assert len(got) == 1 and got[0].code == FRAME_TOO_LARGE and got[0].fatal
    assert reader.next_frame() is NEED_DATA  # the rest of the stream is not read


def test_frame_at_the_limit_is_accepted():
    msg = jsonrpc.encode_request("a", {"pad": ""}, 1)
    pad = 100 - len(msg) + 1
    msg = jsonrpc.encode_request("a", {"pad": "x" * pad}, 1)
    assert len(msg) - 1 == 100
    assert frames(msg, FrameReader(max_frame_bytes=100)) == [Request("a", {"pad": "x" * pad}, 1)]


def test_blank_lines_and_crlf_are_ignored():
    assert frames(b'\n\r\n{"jsonrpc":"2.0","method":"a"}\r\n') == [Notification("a", None)]


messages = st.lists(
    st.one_of(
        st.builds(lambda m, p, i: jsonrpc.request_obj(m, p, i),
                  st.text(min_size=1, max_size=20),
                  st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=3)),
                  st.integers(min_value=0, max_value=10**6) | st.text(min_size=1, max_size=8)),
        st.builds(lambda m: jsonrpc.request_obj(m, {"x": "é\n\u2028"}), st.text(min_size=1, max_size=20)),
    ),
    min_size=1, max_size=8)


@given(messages, st.data())
@settings(max_examples=200)
def test_any_split_of_the_stream_yields_the_same_messages(msgs, data):
    stream = b"".join(jsonrpc.encode(m) for m in msgs)
    whole = frames(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader()
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    got = []
    for piece in pieces:
        got += frames(piece, reader)
    assert got == whole
    assert len(whole) == len(msgs)


@given(st.binary(max_size=3000), st.integers(1, 64))
@settings(max_examples=300)
def test_random_bytes_never_raise_anything_but_protocol_errors(blob, chunk):
    reader = FrameReader(max_frame_bytes=1024)
    for i in range(0, len(blob), chunk):
        reader.receive_data(blob[i:i + chunk])
        while True:
            try:
                frame = reader.next_frame()
            except RemoteProtocolError:
                continue
            if frame is NEED_DATA:
                break


def test_rpc_error_wire_round_trip():
    err = RpcError(-32005, "too many loops", {"limit": 50})
    back = RpcError.from_wire(err.to_wire())
    assert (back.code, back.message, back.data) == (-32005, "too many loops", {"limit": 50})
    assert RpcError.from_wire("junk").code == jsonrpc.INTERNAL_ERROR
