"""The socket server under hostile and heavy clients: it answers, and keeps serving everyone."""

from __future__ import annotations

import json
import socket
import threading

import trio
import trio.testing

from bgcore import jsonrpc
from bgd import features
from bgd.rpc import server
from bgd.rpc.table import METHODS

features.register_methods()


def connect(bgd) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(bgd.socket))
    return s


def read_lines(s: socket.socket, count: int) -> list:
    buf = b""
    while buf.count(b"\n") < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def still_serving(bgd) -> None:
    assert bgd.rpc("daemon.status")["pid"] == bgd.proc.pid


def test_garbage_gets_parse_error_and_the_connection_continues(running_bgd):
    s = connect(running_bgd)
    s.sendall(b"hello daemon\n" + jsonrpc.encode_request("daemon.status", None, 5))
    first, second = read_lines(s, 2)
    assert first["error"]["code"] == -32700 and first["id"] is None
    assert second["id"] == 5 and second["result"]["pid"]


def test_unknown_method_bad_params_and_notifications(running_bgd):
    s = connect(running_bgd)
    s.sendall(jsonrpc.encode_request("no.such", None, 1)
              + jsonrpc.encode_request("session.get", [1, 2], 2)
              + jsonrpc.encode_request("session.get", {"id": 7}, 3)
              + jsonrpc.encode_notification("no.such")       # never answered
              + jsonrpc.encode_request("session.get", {"id": "zzzzzzzz"}, 4))
    a, b, c, d = read_lines(s, 4)
    assert (a["id"], a["error"]["code"]) == (1, -32601)
    assert (b["id"], b["error"]["code"]) == (2, -32602)
    assert (c["id"], c["error"]["code"]) == (3, -32602) and "'id'" in c["error"]["message"]
    assert (d["id"], d["error"]["code"]) == (4, -32001)


def test_batches(running_bgd):
    s = connect(running_bgd)
    batch = [jsonrpc.request_obj("daemon.status", None, 1), {"jsonrpc": "2.0"}, jsonrpc.request_obj("daemon.status"),
             jsonrpc.request_obj("no.such", None, 2)]
    s.sendall(json.dumps(batch).encode() + b"\n")
    (answer,) = read_lines(s, 1)
    assert [x.get("id") for x in answer] == [1, None, 2]
    assert answer[1]["error"]["code"] == -32600 and answer[2]["error"]["code"] == -32601
    # a batch of notifications only gets no answer at all
    s.sendall(json.dumps([jsonrpc.request_obj("daemon.status")]).encode() + b"\n"
              + jsonrpc.encode_request("daemon.status", None, 9))
    (only,) = read_lines(s, 1)
    assert only["id"] == 9


def test_oversized_frame_is_refused_and_closed_others_unaffected(running_bgd):
    bgd = running_bgd
    other = connect(bgd)
    s = connect(bgd)
    try:
        s.sendall(b'{"jsonrpc":"2.0","method":"daemon.status","params":{"pad":"' + b"x" * (2 << 20))
    except BrokenPipeError:
        pass  # the daemon hung up mid-frame, as it should; its answer is still readable
    (answer,) = read_lines(s, 1)
    assert answer["error"]["code"] == -32000
    try:
        assert s.recv(10) == b""  # closed
    except ConnectionResetError:
        pass  # closed with our unread bytes still queued: also closed
    other.sendall(jsonrpc.encode_request("daemon.status", None, 1))
    assert read_lines(other, 1)[0]["result"]
    still_serving(bgd)


def test_half_written_frame_and_abrupt_disconnects(running_bgd):
    bgd = running_bgd
    for _ in range(20):
        s = connect(bgd)
        s.sendall(b'{"jsonrpc":"2.0","method":"daem')
        s.close()
    # disconnect right after a request, before reading the answer
    for _ in range(20):
        s = connect(bgd)
        s.sendall(jsonrpc.encode_request("session.list", {"all": True}, 1))
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    still_serving(bgd)


def test_slow_writer_does_not_stall_others(running_bgd):
    bgd = running_bgd
    slow = connect(bgd)
    msg = jsonrpc.encode_request("daemon.status", None, 1)
    slow.sendall(msg[:10])
    still_serving(bgd)  # answered while the slow client sits mid-frame
    slow.sendall(msg[10:])
    assert read_lines(slow, 1)[0]["id"] == 1


def test_two_hundred_clients_at_once(running_bgd):
    bgd = running_bgd
    results: list = []
    errors: list = []

    def client(i: int) -> None:
        try:
            s = connect(bgd)
            s.sendall(jsonrpc.encode_request("daemon.status", None, i) + jsonrpc.encode_request("session.list", {}, i + 1000))
            lines = read_lines(s, 2)
            results.append((lines[0]["id"], lines[1]["id"]))
            s.close()
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [(i, i + 1000) for i in range(200)]
    still_serving(bgd)


def test_subscribe_with_since_replays_and_reports_missed(running_bgd):
    bgd = running_bgd
    start = bgd.rpc("daemon.status")["event_seq"]
    s1 = bgd.dispatch("say one")
    bgd.wait_state(s1["id"], "completed")
    with bgd.client() as c:
        answer = c.call("events.subscribe", {"since": start})
        assert answer["missed"] is False and answer["backlog"] > 0
        events = [next(c.notifications_iter()).params for _ in range(answer["backlog"])]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(start + 1, start + 1 + len(seqs)))
    assert events[0]["type"] == "session.created" and events[0]["session"]["id"] == s1["id"]
    assert any(e["type"] == "session.updated" and e["session"]["state"] == "completed" for e in events)


def test_event_seq_survives_a_restart(bgd):
    bgd.start()
    s = bgd.dispatch("say x")
    bgd.wait_state(s["id"], "completed")
    before = bgd.rpc("daemon.status")["event_seq"]
    bgd.stop()
    bgd.start()
    with bgd.client() as c:
        answer = c.call("events.subscribe", {"since": before - 2})
        assert answer["backlog"] >= 2 and not answer["missed"]
        assert next(c.notifications_iter()).params["seq"] == before - 1
    bgd.dispatch("say y")
    with bgd.client() as c:
        c.call("events.subscribe", {"since": before})
        assert next(c.notifications_iter()).params["seq"] > before


def test_a_long_pipeline_is_answered_whole_and_in_order(running_bgd):
    # 3,000 requests in one write: their answers (~1 MB) go out in several writes of about
    # FLUSH_BYTES each while later requests are still being handled.
    s = connect(running_bgd)
    payload = b"".join(jsonrpc.encode_request("daemon.status", None, i) for i in range(1, 3001))
    writer = threading.Thread(target=s.sendall, args=(payload,))
    writer.start()
    answers = read_lines(s, 3000)
    writer.join()
    assert [a["id"] for a in answers] == list(range(1, 3001))
    assert all(a["result"]["pid"] == running_bgd.proc.pid for a in answers)


async def test_a_client_that_stops_reading_is_dropped_not_waited_for(autojump_clock):
    # In process, on the virtual clock: a lockstep stream only moves bytes the peer reads.
    # Each answer lists every method (a few KiB), so 199 of them need several flushes.
    assert len(METHODS) > 20

    class Idle:
        shutting_down = False
    ours, theirs = trio.testing.lockstep_stream_pair()
    requests = b"".join(jsonrpc.encode_request("daemon.methods", None, i) for i in range(1, 200))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.send_all, requests)  # and never a receive
        conn = server.Connection(Idle(), ours, nursery)
        started = trio.current_time()
        with trio.fail_after(server.SEND_TIMEOUT_S * 4):
            await server._serve(conn, jsonrpc.FrameReader())
        # Ended by the send bound (the peer never read a byte), not by an error or the fail_after.
        assert trio.current_time() - started >= server.SEND_TIMEOUT_S
        nursery.cancel_scope.cancel()
