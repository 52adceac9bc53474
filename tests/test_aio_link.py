"""bgcore.aio_link: the asyncio clients' shared link to the daemon.

Plain functions around asyncio.run (pytest runs async tests on trio here).
Against a real daemon (`running_bgd`) for following, calling and restarts;
against a scripted socket for what a real daemon rarely does on cue (events in
the same read as an answer, overflow, a daemon that is not there).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bgcore.aio_link import NOT_CONNECTED, Connection, DaemonLink, DaemonUnreachable
from bgcore.jsonrpc import METHOD_NOT_FOUND, Notification, RpcError

TYPES = ["session"]


class Recorder:
    """The link's callbacks, kept for the test to look at."""

    def __init__(self):
        self.resyncs: list[tuple[list[dict], list[dict]]] = []
        self.batches: list[list[dict]] = []
        self.states: list[tuple[bool, str | None]] = []
        self.changed = asyncio.Event()

    def attach(self, link: DaemonLink) -> DaemonLink:
        link.on_resync, link.on_events, link.on_state = self.on_resync, self.on_events, self.on_state
        return link

    def on_resync(self, sessions, since):
        self.resyncs.append((sessions, since))
        self.changed.set()

    def on_events(self, events):
        self.batches.append(events)
        self.changed.set()

    def on_state(self, connected, detail):
        self.states.append((connected, detail))
        self.changed.set()

    @property
    def ups(self) -> list[bool]:
        return [up for up, _ in self.states]

    @property
    def events(self) -> list[dict]:
        """Every event handed over, in order: with a resync, then on its own."""
        return [e for batch in self.batches for e in batch]

    def delivered(self) -> list[dict]:
        # (resync `since` lists and live batches interleave in the order they came;
        # good enough here, where the order is checked on seqs)
        return sorted([e for _, since in self.resyncs for e in since] + self.events, key=lambda e: e["seq"])

    def session_state(self, session_id: str) -> str | None:
        state = None
        for sessions, since in self.resyncs:
            for s in sessions:
                if s["id"] == session_id:
                    state = s["state"]
        for e in self.delivered():
            if (e.get("session") or {}).get("id") == session_id:
                state = e["session"]["state"]
        return state

    async def until(self, predicate, what: str = "the condition", timeout: float = 20.0):
        async def wait():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"never saw {what}; states {self.states}, "
                                 f"{len(self.resyncs)} resyncs, events {[e['seq'] for e in self.events]}") from None


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def history(socket_path: Path, types: list[str]) -> list[dict]:
    """Every event the daemon retains, through a subscription from seq 0."""
    got: list[dict] = []
    conn = await Connection.open(socket_path, on_notification=lambda n: got.append(n.params))
    try:
        answer = await conn.call("events.subscribe", {"since": 0, "types": types})
        while len(got) < answer["backlog"]:
            await asyncio.sleep(0.01)
        return got[:answer["backlog"]]
    finally:
        conn.close()


def _strictly_increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in zip(seqs, seqs[1:]))


# -- against a real daemon --------------------------------------------------------------

def test_follows_a_daemon_and_calls_it_on_both_kinds_of_connection(running_bgd):
    bgd = running_bgd
    early = bgd.dispatch("say before the link")
    bgd.wait_state(early["id"], "completed")

    async def scenario():
        rec = Recorder()
        link = rec.attach(DaemonLink(bgd.socket, types=TYPES))
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [True], "connected")
            assert link.connected and len(rec.resyncs) == 1
            sessions, _ = rec.resyncs[0]
            assert [s["id"] for s in sessions] == [early["id"]]
            # a call on the followed connection, and one on a connection of its own
            made = await link.call("session.dispatch", {"prompt": "say hi", "cwd": str(bgd.work)})
            assert (await link.call_alone("daemon.status"))["socket"] == str(bgd.socket)
            await rec.until(lambda: rec.session_state(made["id"]) == "completed", "the session complete")
            seqs = [e["seq"] for e in rec.events]
            assert _strictly_increasing(seqs) and link.last_seq == seqs[-1]
            # the daemon saying no is an RpcError, and the link carries on
            with pytest.raises(RpcError) as refused:
                await link.call("no.such.method")
            assert refused.value.code == METHOD_NOT_FOUND
            assert (await link.call("session.get", {"id": made["id"]}))["state"] == "completed"
            assert rec.ups == [True] and len(rec.resyncs) == 1
        finally:
            follower.cancel()
            link.close()

    run(scenario())


def test_a_daemon_restart_loses_nothing_and_repeats_nothing(running_bgd):
    bgd = running_bgd

    async def scenario():
        rec, rec_always = Recorder(), Recorder()
        link = rec.attach(DaemonLink(bgd.socket, types=TYPES, backoff=(0.05, 0.5)))
        always = rec_always.attach(DaemonLink(bgd.socket, types=TYPES, always_resync=True, backoff=(0.05, 0.5)))
        followers = [asyncio.ensure_future(link.run()), asyncio.ensure_future(always.run())]
        try:
            await rec.until(lambda: rec.ups == [True], "connected")
            await rec_always.until(lambda: rec_always.ups == [True], "connected (always resync)")
            before = await link.call("session.dispatch", {"prompt": "say before", "cwd": str(bgd.work)})
            await rec.until(lambda: rec.session_state(before["id"]) == "completed", "the first session done")

            assert await asyncio.to_thread(bgd.stop) == 0
            await rec.until(lambda: rec.ups == [True, False], "the daemon gone")
            await rec_always.until(lambda: rec_always.ups == [True, False], "the daemon gone (always resync)")
            with pytest.raises(DaemonUnreachable, match=NOT_CONNECTED):
                await link.call("daemon.status")   # refused at once while down
            await asyncio.to_thread(bgd.start)
            # Very likely before the link is back: it must come through `since`, once.
            after = await asyncio.to_thread(bgd.dispatch, "say after")
            await rec.until(lambda: rec.ups == [True, False, True], "reconnected")
            await rec.until(lambda: rec.session_state(after["id"]) == "completed", "the later session done")
            await rec_always.until(lambda: rec_always.session_state(after["id"]) == "completed",
                                   "the later session done (always resync)")
            assert rec.ups == [True, False, True] and len(rec.resyncs) == 1   # resumed, no reload needed
            assert len(rec_always.resyncs) == 2

            # Exactly the daemon's own history, once each, in order.
            assert _strictly_increasing([e["seq"] for e in rec.events])
            seqs = [e["seq"] for e in rec.delivered()]
            retained = [e["seq"] for e in await history(bgd.socket, TYPES)]
            assert seqs == [s for s in retained if seqs[0] <= s <= seqs[-1]]
            assert link.last_seq == seqs[-1]
            always_seqs = [e["seq"] for e in rec_always.delivered()]
            assert _strictly_increasing(always_seqs)
        finally:
            for f in followers:
                f.cancel()
            link.close()
            always.close()

    run(scenario(), timeout=90)


def test_call_alone_starts_the_daemon_through_the_spawner(bgd):
    spawned: list[Path] = []

    def spawn(path: Path) -> None:
        spawned.append(path)
        bgd.start()

    async def scenario():
        with pytest.raises(DaemonUnreachable, match="no daemon answers"):
            await DaemonLink(bgd.socket).call_alone("daemon.status")
        with pytest.raises(DaemonUnreachable, match="no daemon answers"):
            await DaemonLink(bgd.socket, spawn=spawn).call_alone("daemon.status", spawn=False)

        def broken(path: Path) -> None:
            raise RuntimeError("bgd would not start: see its log")
        with pytest.raises(DaemonUnreachable, match="bgd would not start"):
            await DaemonLink(bgd.socket, spawn=broken).call_alone("daemon.status")

        link = DaemonLink(bgd.socket, spawn=spawn)
        assert (await link.call_alone("daemon.status"))["socket"] == str(bgd.socket)
        assert (await link.call_alone("daemon.status"))["socket"] == str(bgd.socket)
        assert spawned == [bgd.socket]   # once: the second call found it running

    run(scenario())


def test_bgctl_ls_does_not_import_the_link(running_bgd):
    trace = subprocess.run([sys.executable, "-X", "importtime", "-m", "bgctl", "ls"], env=running_bgd.env,
                           capture_output=True, text=True, cwd=str(running_bgd.work))
    assert trace.returncode == 0, trace.stderr[-500:]
    assert "bgcore.aio_link" not in trace.stderr


# -- against a scripted socket --------------------------------------------------------

def _frame(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _event(seq: int, sid: str = "s1", state: str = "working") -> bytes:
    return _frame({"jsonrpc": "2.0", "method": "event", "params": {
        "seq": seq, "type": "session.updated", "session": {"id": sid, "state": state}}})


def _answer(msg: dict, result) -> bytes:
    return _frame({"jsonrpc": "2.0", "id": msg["id"], "result": result})


class Scripted:
    """A socket that answers each request with `reply(connection number, request)`: bytes, one write."""

    def __init__(self, path: Path, reply):
        self.path, self.reply = path, reply
        self.requests: list[tuple[int, dict]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server = None

    async def start(self):
        self.server = await asyncio.start_unix_server(self.handle, str(self.path))

    async def stop(self):
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    async def handle(self, reader, writer):
        n = len(self.writers)
        self.writers.append(writer)
        while line := await reader.readline():
            msg = json.loads(line)
            self.requests.append((n, msg))
            data = self.reply(n, msg)
            if data:
                writer.write(data)
                await writer.drain()

    def subscribes(self) -> list[dict]:
        return [m.get("params") or {} for _, m in self.requests if m["method"] == "events.subscribe"]


def test_events_in_the_same_read_as_an_answer_are_kept(tmp_path):
    sock = tmp_path / "d.sock"

    def reply(n, msg):
        if msg["method"] == "events.subscribe":   # the answer and the next events in one write
            return _answer(msg, {"seq": 7, "missed": False, "backlog": 5}) + b"".join(_event(s) for s in (3, 4, 5, 6, 7))
        return b""

    async def scenario():
        server = Scripted(sock, reply)
        await server.start()
        rec = Recorder()
        link = rec.attach(DaemonLink(sock, types=TYPES))
        link.last_seq = 3          # seen up to 3: 3 again is dropped, 4..7 are new
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [True] and len(rec.events) == 4, "the backlog")
            assert [e["seq"] for e in rec.events] == [4, 5, 6, 7] and rec.resyncs == []
            assert server.subscribes() == [{"types": TYPES, "since": 3}]
        finally:
            follower.cancel()
            await server.stop()

    run(scenario())


def test_a_resync_hands_over_the_events_that_came_with_it(tmp_path):
    sock = tmp_path / "d.sock"
    listed = [{"id": "s1", "state": "working"}, {"id": "s2", "state": "completed"}]

    def reply(n, msg):
        if msg["method"] == "events.subscribe":
            # 5 is older than the list (dropped: the list covers it); 6 came after subscribing
            return _answer(msg, {"seq": 5, "missed": False, "backlog": 0}) + _event(5) + _event(6)
        if msg["method"] == "session.list":
            return _event(7) + _answer(msg, listed) + _event(8, state="needs_input")
        return b""

    async def scenario():
        server = Scripted(sock, reply)
        await server.start()
        rec = Recorder()
        link = rec.attach(DaemonLink(sock, types=TYPES))
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [True], "connected")
            [(sessions, since)] = rec.resyncs
            assert sessions == listed and [e["seq"] for e in since] == [6, 7, 8]
            assert rec.events == [] and link.last_seq == 8
            server.writers[0].write(_event(8) + _event(9))   # 8 again: dropped
            await rec.until(lambda: rec.events, "a live event")
            assert [e["seq"] for e in rec.events] == [9]
        finally:
            follower.cancel()
            await server.stop()

    run(scenario())


def test_a_missed_history_or_a_new_daemon_means_a_resync(tmp_path):
    sock = tmp_path / "d.sock"
    answers = iter([{"seq": 900, "missed": True}, {"seq": 2, "missed": False}])

    def reply(n, msg):
        if msg["method"] == "events.subscribe":
            return _answer(msg, {**next(answers), "backlog": 0})
        if msg["method"] == "session.list":
            return _answer(msg, [])
        return b""

    async def scenario():
        server = Scripted(sock, reply)
        await server.start()
        rec = Recorder()
        link = rec.attach(DaemonLink(sock, types=TYPES, backoff=(0.01, 0.05)))
        link.last_seq = 5
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [True], "connected")
            assert len(rec.resyncs) == 1 and link.last_seq == 900
            server.writers[0].close()   # back with a seq below ours: a fresh state dir
            await rec.until(lambda: rec.ups == [True, False, True], "reconnected")
            assert len(rec.resyncs) == 2 and link.last_seq == 2
            assert [s.get("since") for s in server.subscribes()] == [5, 900]
        finally:
            follower.cancel()
            await server.stop()

    run(scenario())


def test_overflow_reconnects_with_since(tmp_path):
    sock = tmp_path / "d.sock"

    def reply(n, msg):
        if msg["method"] == "events.subscribe":
            return _answer(msg, {"seq": 0 if n == 0 else 2, "missed": False, "backlog": 0})
        if msg["method"] == "session.list":
            return _answer(msg, [])
        return b""

    async def scenario():
        server = Scripted(sock, reply)
        await server.start()
        rec = Recorder()
        link = rec.attach(DaemonLink(sock, types=TYPES, backoff=(0.01, 0.05)))
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [True], "connected")
            server.writers[0].write(_event(1) + _event(2) + _frame({
                "jsonrpc": "2.0", "method": "events.overflow", "params": {"seq": 2, "message": "fell behind"}}))
            await rec.until(lambda: rec.ups == [True, False, True], "back after the overflow")
            assert "fell behind" in rec.states[1][1]
            assert [s.get("since") for s in server.subscribes()] == [None, 2]
            assert len(rec.resyncs) == 1 and [e["seq"] for e in rec.events] == [1, 2]
        finally:
            follower.cancel()
            await server.stop()

    run(scenario())


def test_while_nothing_answers_it_says_so_once_and_keeps_trying(tmp_path):
    sock = tmp_path / "d.sock"

    def reply(n, msg):
        if msg["method"] == "events.subscribe":
            return _answer(msg, {"seq": 0, "missed": False, "backlog": 0})
        if msg["method"] == "session.list":
            return _answer(msg, [])
        return _frame({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no"}})

    async def scenario():
        rec = Recorder()
        link = rec.attach(DaemonLink(sock, types=TYPES, backoff=(0.005, 0.02)))
        follower = asyncio.ensure_future(link.run())
        try:
            await rec.until(lambda: rec.ups == [False], "the first failure")
            assert "no daemon answers" in rec.states[0][1] and not link.connected
            with pytest.raises(DaemonUnreachable, match=NOT_CONNECTED):
                await link.call("daemon.status")
            await asyncio.sleep(0.2)           # several retries: still reported only once
            assert rec.ups == [False]
            server = Scripted(sock, reply)
            await server.start()
            link.retry_now()
            await rec.until(lambda: rec.ups == [False, True], "connected once it answers")
            with pytest.raises(RpcError):
                await link.call("daemon.status")
            link.close()
            await asyncio.wait_for(follower, 5)   # close() ends run() quietly
            assert rec.ups == [False, True]
            await server.stop()
        finally:
            follower.cancel()

    run(scenario())


def test_a_connection_keeps_notifications_around_an_answer(tmp_path):
    sock = tmp_path / "d.sock"

    def reply(n, msg):
        return (_frame({"jsonrpc": "2.0", "method": "event", "params": {"seq": 1}}) + _answer(msg, "ok")
                + _frame({"jsonrpc": "2.0", "method": "event", "params": {"seq": 2}}))

    async def scenario():
        server = Scripted(sock, reply)
        await server.start()
        seen: list[Notification] = []
        conn = await Connection.open(sock, on_notification=seen.append)
        try:
            assert await conn.call("anything") == "ok"
            assert [n.params["seq"] for n in seen] == [1, 2]   # both handled by the time the answer is
            await server.stop()
            reason = await conn.wait_closed()
            assert "closed the connection" in str(reason)
            with pytest.raises(DaemonUnreachable):
                await conn.call("anything")
        finally:
            conn.close()

    run(scenario())
