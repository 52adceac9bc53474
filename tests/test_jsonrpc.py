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


# -- Peer: both directions on one stream ----------------------------------------------

def test_peer_tells_the_peers_requests_from_the_responses_to_ours_with_the_same_ids():
    peer = jsonrpc.Peer()
    ours = peer.request("session/prompt", {"sessionId": "s"})
    assert ours == {"jsonrpc": "2.0", "method": "session/prompt", "params": {"sessionId": "s"}, "id": 0}
    # The agent numbers its own requests from 0 too: id 0 arrives both ways.
    theirs = peer.receive(jsonrpc.encode_request("session/request_permission", {"options": []}, 0).rstrip())
    assert theirs == [Request("session/request_permission", {"options": []}, 0)]
    assert peer.outstanding == {0: "session/prompt"}
    note = peer.receive(b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s"}}')
    assert note == [Notification("session/update", {"sessionId": "s"})]
    (reply,) = peer.receive(jsonrpc.encode_result(0, {"stopReason": "end_turn"}).rstrip())
    assert reply == jsonrpc.Reply(0, "session/prompt", {"stopReason": "end_turn"})
    assert peer.outstanding == {}
    assert peer.result(0, {"outcome": {"outcome": "cancelled"}}) == {
        "jsonrpc": "2.0", "id": 0, "result": {"outcome": {"outcome": "cancelled"}}}


def test_peer_error_replies_carry_the_wire_error():
    peer = jsonrpc.Peer()
    peer.request("session/new", {})
    (reply,) = peer.receive(b'{"jsonrpc":"2.0","id":0,"error":{"code":-32000,"message":"Authentication required"}}')
    assert reply.method == "session/new" and reply.result is None
    assert (reply.error.code, reply.error.message) == (-32000, "Authentication required")


def test_peer_a_response_to_nothing_is_an_error_item_and_the_stream_goes_on():
    peer = jsonrpc.Peer()
    peer.request("initialize")
    (stray,) = peer.receive(b'{"jsonrpc":"2.0","id":7,"result":{}}')
    assert isinstance(stray, RemoteProtocolError) and "id 7" in stray.message
    (reply,) = peer.receive(b'{"jsonrpc":"2.0","id":0,"result":{}}')
    assert reply.method == "initialize"
    (twice,) = peer.receive(b'{"jsonrpc":"2.0","id":0,"result":{}}')  # answered already
    assert isinstance(twice, RemoteProtocolError)


def test_peer_garbage_raises_like_parse_frame():
    peer = jsonrpc.Peer()
    with pytest.raises(RemoteProtocolError) as info:
        peer.receive(b"this is not json")
    assert info.value.code == PARSE_ERROR


def test_peer_abandon_answers_every_outstanding_request():
    peer = jsonrpc.Peer(first_id=5)
    peer.request("initialize")
    peer.request("session/new")
    replies = peer.abandon(RpcError(jsonrpc.INTERNAL_ERROR, "the agent exited"))
    assert [(r.id, r.method, r.error.message) for r in replies] == [
        (5, "initialize", "the agent exited"), (6, "session/new", "the agent exited")]
    assert peer.outstanding == {}


@given(st.permutations(range(6)), st.lists(st.integers(0, 5), max_size=6))
@settings(max_examples=100)
def test_peer_matches_responses_in_any_order_among_the_peers_own_requests(order, theirs):
    peer = jsonrpc.Peer()
    methods = [f"m{i}" for i in range(6)]
    for method in methods:
        peer.request(method)
    lines = [jsonrpc.encode_result(i, i) for i in order] + [jsonrpc.encode_request("x", None, i) for i in theirs]
    got = [item for line in lines for item in peer.receive(line.rstrip())]
    assert [(r.method, r.result) for r in got if isinstance(r, jsonrpc.Reply)] == [(f"m{i}", i) for i in order]
    assert [r.id for r in got if isinstance(r, Request)] == theirs
    assert peer.outstanding == {}
