"""The trio shell (daemon/bgd/loop_runner.py) on trio's virtual clock, with a fake session manager.

A week of a five-minute loop runs in well under a second of real time: the shell sleeps until the
next deadline (or a poke) and the autojump clock skips the sleep.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import trio

from bgcore.jsonrpc import INVALID_STATE, NOT_FOUND, RpcError
from bgcore.schedule import parse_interval, parse_when_and_what
from bgd import clock
from bgd.events import EventBus
from bgd.loops.prompt import MAINTENANCE_PROMPT, MAX_BYTES
from bgd.loops.runner import LoopRunner
from bgd.loops.book import FALLBACK_WAKE_S, LIFETIME_S
from bgd.store import Store

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc).timestamp()  # on a five-minute slot


@dataclass
class FakeSession:
    id: str
    cwd: str
    state: str = "completed"
    backend: str = "claude"
    next_wake_at: str | None = None
    loop_runs: int = 0
    error: str | None = None
    origin: str = "dispatch"


class FakeSessions:
    """What the runner uses of SessionManager; each turn lasts `turn_s` virtual seconds."""

    def __init__(self, nursery, turn_s: float = 30):
        self.nursery = nursery
        self.turn_s = turn_s
        self.sessions: dict[str, FakeSession] = {}
        self.on_turn_end, self.on_session_end = [], []
        self.turns: list[tuple[str, float, str]] = []
        self.notes: list[tuple[str, dict]] = []
        self.during_turn = None  # called as f(session) when a turn starts

    def add(self, session_id: str, cwd: str, **fields) -> FakeSession:
        self.sessions[session_id] = FakeSession(session_id, cwd, **fields)
        return self.sessions[session_id]

    def get(self, session_id):
        if session_id not in self.sessions:
            raise RpcError(NOT_FOUND, f"no session {session_id!r}")
        return self.sessions[session_id]

    async def start_turn(self, session, text, kind="user"):
        session.state, session.next_wake_at, session.error = "working", None, None
        self.turns.append((session.id, trio.current_time(), text))
        if self.during_turn:
            self.during_turn(session)
        self.nursery.start_soon(self._finish, session)

    async def _finish(self, session):
        await trio.sleep(self.turn_s)
        if session.state == "working":
            session.state = "completed"
            for hook in self.on_turn_end:
                hook(session)

    def update(self, session, **fields):
        for key, value in fields.items():
            setattr(session, key, value)

    def note(self, session, data):
        self.notes.append((session.id, data))

    def stop(self, session):
        session.state = "stopped"
        for hook in self.on_session_end:
            hook(session, "stopped")


class Harness:
    def __init__(self, nursery, store, tmp_path, turn_s=30):
        self.fake = FakeSessions(nursery, turn_s)
        self.store = store
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.work = tmp_path / "work"
        self.work.mkdir(exist_ok=True)
        self.start = trio.current_time()
        self.runner = self.new_runner()

    def new_runner(self) -> LoopRunner:
        runner = LoopRunner(self.fake, EventBus(self.store), self.store, jitter=lambda: False,
                            now=lambda: T0 + trio.current_time() - self.start, tz=UTC, home=lambda: str(self.home))
        self.fake.on_turn_end.append(runner.on_turn_end)
        self.fake.on_session_end.append(runner.on_session_end)
        return runner

    def elapsed(self, t: float) -> float:
        return t - self.start

    def turn_times(self) -> list[float]:
        return [round(self.elapsed(t)) for _, t, _ in self.fake.turns]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "bgd.sqlite3")
    yield s
    s.close()


async def _with_runner(store, tmp_path, body, turn_s=30):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, store, tmp_path, turn_s)
        await nursery.start(h.runner.service)
        await body(h)
        nursery.cancel_scope.cancel()


async def test_a_week_of_a_five_minute_loop(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        loop = h.runner.create_fixed(session, parse_interval("5m"), "check the build")
        await trio.sleep(LIFETIME_S + 3600)
        times = h.turn_times()
        assert times[0] == 0 and times[-1] == LIFETIME_S
        assert len(times) == 7 * 24 * 12 + 1  # at once, then every slot; the expiry is the last slot
        assert all(b - a == 300 for a, b in zip(times, times[1:]))
        assert loop.id not in h.runner.book.loops and store.load_loops() == []
        assert session.state == "completed" and session.next_wake_at is None
        assert session.loop_runs == len(times)
        assert h.runner.passes < 3 * len(times)  # it slept between fires: no polling
    await _with_runner(store, tmp_path, body)


async def test_between_iterations_the_session_sleeps_with_its_next_wake(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        h.runner.create_fixed(session, parse_interval("5m"), "check")
        await trio.sleep(1)
        assert session.state == "working" and session.loop_runs == 1
        await trio.sleep(60)
        assert session.state == "sleeping"
        assert session.next_wake_at == clock.iso(datetime.fromtimestamp(T0 + 300, timezone.utc))
    await _with_runner(store, tmp_path, body)


async def test_a_due_fire_waits_for_the_turn_and_missed_fires_run_once(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        h.runner.create_fixed(session, parse_interval("5m"), "check")
        await trio.sleep(3000)
        # Each turn takes 12 minutes: the fires at 5 and 10 are missed and run once, at 12.
        assert h.turn_times()[:4] == [0, 720, 1440, 2160]
    await _with_runner(store, tmp_path, body, turn_s=720)


async def test_needs_input_also_holds_a_fire(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work), state="needs_input")
        h.runner.create_fixed(session, parse_interval("5m"), "check")
        await trio.sleep(3600)
        assert h.fake.turns == []
        session.state = "completed"
        h.runner.on_turn_end(session)
        await trio.sleep(1)
        assert len(h.fake.turns) == 1
    await _with_runner(store, tmp_path, body)


async def test_a_bare_loop_reads_loop_md_afresh_before_every_iteration(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        (h.home / ".claude").mkdir()
        (h.home / ".claude" / "loop.md").write_text("from home")
        h.runner.create_fixed(session, parse_interval("5m"), None)
        await trio.sleep(60)
        (h.work / ".claude").mkdir()
        (h.work / ".claude" / "loop.md").write_text("from the project, version 1")  # wins over home
        await trio.sleep(300)
        (h.work / ".claude" / "loop.md").write_text("é" * MAX_BYTES)  # 50,000 bytes
        await trio.sleep(300)
        (h.work / ".claude" / "loop.md").unlink()
        (h.home / ".claude" / "loop.md").unlink()
        await trio.sleep(300)
        prompts = [text for _, _, text in h.fake.turns]
        assert prompts[:2] == ["from home", "from the project, version 1"]
        assert prompts[2] == "é" * (MAX_BYTES // 2)  # cut at 25,000 bytes, on a character boundary
        assert prompts[3] == MAINTENANCE_PROMPT
    await _with_runner(store, tmp_path, body)


async def test_a_loop_md_that_is_not_utf8_skips_the_iteration_with_an_error(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        (h.work / ".claude").mkdir()
        path = h.work / ".claude" / "loop.md"
        path.write_text("good")
        loop = h.runner.create_fixed(session, parse_interval("5m"), None)
        await trio.sleep(60)
        path.write_bytes(b"caf\xe9 latin-1")
        await trio.sleep(300)
        assert len(h.fake.turns) == 1
        assert "not UTF-8" in session.error and loop.id in session.error
        assert any("not UTF-8" in (data.get("error") or "") for _, data in h.fake.notes)
        assert session.state == "sleeping" and loop.id in h.runner.book.loops  # the loop goes on
        path.write_text("fixed")
        await trio.sleep(300)
        assert [text for _, _, text in h.fake.turns] == ["good", "fixed"]
    await _with_runner(store, tmp_path, body)


async def test_dynamic_loop_follows_schedule_wakeup(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        asks = iter([(120, "waiting for CI"), (5, "too soon"), (99999, "too late")])

        def agent(s):
            delay, reason = next(asks, (None, None))
            if delay is not None:
                h.runner.wakeup(s, delay, reason, None, False)
        h.fake.during_turn = agent
        loop = h.runner.create_dynamic(session, "watch CI")
        await trio.sleep(2 * 3600)
        # clamped to 60-3600 s, counted from the call (at the start of each 30 s turn)
        assert h.turn_times()[:4] == [0, 120, 180, 3780]
        assert loop.reason.startswith("fallback")
    await _with_runner(store, tmp_path, body)


async def test_a_silent_dynamic_iteration_gets_one_fallback_then_the_loop_ends(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        loop = h.runner.create_dynamic(session, "watch")
        await trio.sleep(3 * 3600)
        assert h.turn_times() == [0, 30 + FALLBACK_WAKE_S]
        assert loop.id not in h.runner.book.loops and session.state == "completed"
    await _with_runner(store, tmp_path, body)


async def test_schedule_wakeup_stop_ends_the_loop(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        h.fake.during_turn = lambda s: h.runner.wakeup(s, 0, "", None, True)
        loop = h.runner.create_dynamic(session, "once is enough")
        await trio.sleep(3 * 3600)
        assert len(h.fake.turns) == 1 and loop.id not in h.runner.book.loops
        with pytest.raises(RpcError) as err:
            h.runner.wakeup(session, 0, "", None, True)
        assert err.value.code == NOT_FOUND
    await _with_runner(store, tmp_path, body)


async def test_a_reminder_fires_once(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        now = datetime.fromtimestamp(T0, timezone.utc)
        schedule, prompt = parse_when_and_what("in 45 minutes push the release branch", now=now, tz=UTC)
        h.runner.create_once(session, schedule, prompt)
        await trio.sleep(1)
        assert session.state == "sleeping" and h.fake.turns == []
        await trio.sleep(24 * 3600)
        assert h.turn_times() == [45 * 60] and [t for _, _, t in h.fake.turns] == ["push the release branch"]
        assert h.runner.book.loops == {} and session.state == "completed"
    await _with_runner(store, tmp_path, body)


async def test_stop_ends_the_loops_and_resume_restores_them(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        h.runner.create_fixed(session, parse_interval("5m"), "check")
        await trio.sleep(60)
        h.fake.stop(session)
        await trio.sleep(3600)
        assert len(h.fake.turns) == 1
        with pytest.raises(RpcError) as err:
            h.runner.live_session("s1")
        assert err.value.code == INVALID_STATE and "stopped" in err.value.message
        session.state = "completed"  # what `bgctl resume` does before the hook (its own turn aside)
        h.runner.on_resume(session)
        await trio.sleep(300)
        assert len(h.fake.turns) == 2
    await _with_runner(store, tmp_path, body)


async def test_a_restart_restores_every_loop(store, tmp_path, autojump_clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, store, tmp_path)
        session = h.fake.add("s1", str(h.work))
        async with trio.open_nursery() as inner:
            await inner.start(h.runner.service)
            h.runner.create_fixed(session, parse_interval("5m"), "check")
            h.runner.create_dynamic(session, "dyn")
            await trio.sleep(10)  # the fixed loop's iteration is running
            inner.cancel_scope.cancel()
        assert len(store.load_loops()) == 2
        session.state = "failed"  # the daemon's restart failed the running turn
        h.fake.on_turn_end.clear()
        h.fake.on_session_end.clear()
        h.runner = h.new_runner()
        await nursery.start(h.runner.service)
        assert len(h.runner.book.loops) == 2
        await trio.sleep(600)
        # the loop whose first iteration was still waiting runs at once after the restart
        texts = [text for _, _, text in h.fake.turns]
        assert set(texts[:2]) == {"check", "dyn"} and len(texts) >= 3
        nursery.cancel_scope.cancel()


async def test_loops_of_a_removed_session_are_deleted(store, tmp_path, autojump_clock):
    async def body(h):
        session = h.fake.add("s1", str(h.work))
        h.runner.create_fixed(session, parse_interval("5m"), "check")
        h.runner.on_session_end(session, "removed")
        del h.fake.sessions["s1"]
        await trio.sleep(3600)
        assert h.runner.book.loops == {} and store.load_loops() == []
        with pytest.raises(RpcError) as err:
            h.runner.live_session("s1")
        assert err.value.code == NOT_FOUND and "removed" in err.value.message
    await _with_runner(store, tmp_path, body)
