"""The routines' trio shell (bgd.routines.RoutineService) on trio's virtual clock, with a fake session
manager and workspaces made at once: schedule triggers on time, the missed-run rule, one-off schedules,
the stagger, the timeout, the queue under max_concurrent_runs, overlap, pruning after
keep_workspaces_days, and a restart that leaves open runs `daemon_restarted`."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import trio

from bgcore.config import Config, RoutinesConfig
from bgcore.routines_file import Repo, stagger_seconds
from bgd.events import EventBus
from bgd.routines.runner import RoutineService
from bgd.routines.schedules import ScheduleTriggers
from bgd.routines.workspace import Clone
from bgd.store import Store

UTC = timezone.utc
BASE = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)


class FakeSessions:
    def __init__(self, clock):
        self.clock = clock
        self.sessions: dict[str, SimpleNamespace] = {}
        self.on_turn_end, self.on_session_end, self.on_permission = [], [], []
        self.env_for, self.args_for = [], []
        self.masks: dict = {}
        self.dispatched: list[SimpleNamespace] = []
        self._ids = itertools.count()

    async def dispatch(self, prompt, cwd, *, prepare=None, **kw):
        session = SimpleNamespace(id=f"s{next(self._ids):07d}", prompt=prompt, cwd=cwd, state="working",
                                  at=self.clock(), error=None, outcome=None, **kw)
        if prepare is not None:
            prepare(session)
        self.sessions[session.id] = session
        self.dispatched.append(session)
        return session

    def end(self, session, state="completed"):
        session.state = state
        for hook in self.on_turn_end:
            hook(session)

    async def stop(self, session, reason="stopped"):
        session.state = "stopped"
        session.stop_reason = reason
        for hook in self.on_session_end:
            hook(session, "stopped")

    def update(self, session, **fields):
        for key, value in fields.items():
            setattr(session, key, value)


class World:
    def __init__(self, tmp_path: Path, toml: str, **routines_config):
        self.jump = timedelta()
        self.origin = trio.current_time()
        self.config = Config(routines=RoutinesConfig(**{"stagger": False, **routines_config}))
        (tmp_path / "config").mkdir(exist_ok=True)
        (tmp_path / "config" / "routines.toml").write_text(toml)
        self.tmp_path = tmp_path
        self.store = Store(tmp_path / "state" / "bgd.sqlite3")
        self.bus = EventBus(self.store)
        self.sessions = FakeSessions(self.now)
        self.prepared: list[Path] = []
        self.service = RoutineService(store=self.store, bus=self.bus, sessions=self.sessions, config=lambda: self.config,
                                      config_dir=tmp_path / "config", state_dir=tmp_path / "state", now=self.now,
                                      tz=ZoneInfo("UTC"), prepare_workspace=self.prepare)
        self.service.schedules = ScheduleTriggers(self.service, stagger=self.config.routines.stagger)

    async def prepare(self, run_dir: Path, repos, push):
        run_dir.mkdir(parents=True)
        (run_dir / "app").mkdir()
        self.prepared.append(run_dir)
        return [Clone(Repo(r.url, r.ref), run_dir / "app", "0" * 40) for r in repos]

    def now(self) -> datetime:
        return BASE + timedelta(seconds=trio.current_time() - self.origin) + self.jump

    def runs(self, name=None):
        return [(r["due_at"][11:16] if r.get("due_at") else None, r["status"], r["reason"] or "")
                for r in self.service.runs(name)]


def routine(name: str, schedule: str | None = None, *, extra: str = "", api: bool = False) -> str:
    text = f'[routines.{name}]\nprompt = "do {name}"\nrepos = ["/srv/{name}"]\n{extra}\n'
    if schedule:
        text += f'[[routines.{name}.triggers]]\nschedule = "{schedule}"\n'
    if api:
        text += f"[[routines.{name}.triggers]]\napi = true\n"
    return text + "\n"


async def sleep_until(world: World, when: datetime) -> None:
    await trio.sleep((when - world.now()).total_seconds())


async def test_a_schedule_fires_on_time_in_a_fresh_workspace(tmp_path, autojump_clock):
    world = World(tmp_path, routine("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        await sleep_until(world, BASE.replace(hour=11, second=1))
        first = world.sessions.dispatched[0]
        world.sessions.end(first)
        await sleep_until(world, BASE.replace(hour=12, second=1))
        nursery.cancel_scope.cancel()
    fired = [(s.at.strftime("%H:%M:%S"), s.origin, s.permission_mode) for s in world.sessions.dispatched]
    assert fired == [("11:00:00", "routine:hourly", "default"), ("12:00:00", "routine:hourly", "default")]
    assert world.runs("hourly") == [("12:00", "running", ""), ("11:00", "finished", "")]
    oldest = world.service.runs("hourly")[-1]
    assert first.cwd == str(tmp_path / "state" / "runs" / oldest["id"] / "app") == oldest["repos"][0]["path"]
    assert first.prompt.startswith("do hourly\n\n---\nThis is run ") and first.outcome == "unreported"


async def test_missed_fires_catch_up_once_and_record_the_rest(tmp_path, autojump_clock):
    world = World(tmp_path, routine("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    world.store.close()
    later = World(tmp_path, routine("hourly", "hourly"))
    later.jump = timedelta(hours=3)  # bgd was down for three hours
    async with trio.open_nursery() as nursery:
        await nursery.start(later.service.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert later.runs("hourly") == [("13:00", "running", ""), ("12:00", "skipped", "daemon_down"),
                                    ("11:00", "skipped", "daemon_down")]
    assert [r["catch_up"] for r in later.service.runs("hourly") if r["status"] == "running"] == [True]


async def test_a_suspend_fires_promptly_on_resume(tmp_path, autojump_clock):
    world = World(tmp_path, routine("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        await sleep_until(world, BASE.replace(hour=10, minute=30))
        world.jump += timedelta(hours=2)  # the machine slept from 10:30 to 12:30
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert world.runs("hourly") == [("12:00", "running", ""), ("11:00", "skipped", "asleep")]


async def test_a_one_off_schedule_fires_once_and_disables_its_trigger(tmp_path, autojump_clock):
    world = World(tmp_path, routine("once", "once at 2026-06-01 10:05") + "# trailing comment\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        await sleep_until(world, BASE.replace(minute=6))
        await sleep_until(world, BASE.replace(hour=12))
        nursery.cancel_scope.cancel()
    text = (tmp_path / "config" / "routines.toml").read_text()
    assert 'schedule = "once at 2026-06-01 10:05"\nenabled = false\n' in text and "# trailing comment" in text
    assert len(world.sessions.dispatched) == 1
    assert world.service.routines["once"].triggers[0].enabled is False


async def test_routines_are_staggered_by_name(tmp_path, autojump_clock):
    world = World(tmp_path, routine("stagger-me", "hourly"), stagger=True)
    offset = stagger_seconds("stagger-me")
    assert 0 < offset < 300
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        await sleep_until(world, BASE.replace(hour=11) + timedelta(seconds=offset + 1))
        nursery.cancel_scope.cancel()
    assert world.sessions.dispatched[0].at == BASE.replace(hour=11, second=0) + timedelta(seconds=offset)


async def test_the_timeout_stops_the_session(tmp_path, autojump_clock):
    world = World(tmp_path, routine("slow", extra='timeout = "30m"', api=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        rec = world.service.offer(world.service.routines["slow"], "manual", manual=True)
        await trio.sleep(29 * 60)
        assert world.service.run_record(rec["id"])["status"] == "running"
        await trio.sleep(2 * 60)
        nursery.cancel_scope.cancel()
    done = world.service.run_record(rec["id"])
    session = world.sessions.dispatched[0]
    assert done["status"] == "timed_out" and session.state == "stopped" and "30m" in session.stop_reason
    assert done["ended_at"].startswith("2026-06-01T10:30:30")


async def test_runs_queue_under_the_cap_and_overlap_skips(tmp_path, autojump_clock):
    toml = routine("a", api=True) + routine("b", api=True) + routine("c", api=True, extra='overlap = "skip"')
    world = World(tmp_path, toml, max_concurrent_runs=2)
    service = world.service
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        runs = [service.offer(service.routines[n], "api") for n in ("a", "b", "c")]
        await trio.sleep(1)
        assert [r["status"] for r in runs] == ["running", "running", "queued"] and runs[2]["reason"] == "concurrency_limit"
        again = service.offer(service.routines["c"], "api")
        assert (again["status"], again["reason"]) == ("skipped", "previous_run_active")
        world.sessions.end(world.sessions.sessions[runs[0]["session_id"]])
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert runs[0]["status"] == "finished" and runs[2]["status"] == "running"


async def test_workspaces_are_pruned_after_keep_days(tmp_path, autojump_clock):
    world = World(tmp_path, routine("a", api=True), keep_workspaces_days=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        rec = world.service.offer(world.service.routines["a"], "api")
        await trio.sleep(1)
        world.sessions.end(world.sessions.dispatched[0])
        await trio.sleep(2 * 86400 - 60)
        assert world.prepared[0].exists()
        await trio.sleep(120)
        nursery.cancel_scope.cancel()
    assert not world.prepared[0].exists()
    assert world.service.run_record(rec["id"])["workspace_removed_at"].startswith("2026-06-03T10:00:3")


async def test_a_restart_leaves_open_runs_daemon_restarted(tmp_path, autojump_clock):
    world = World(tmp_path, routine("a", api=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        rec = world.service.offer(world.service.routines["a"], "api")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    world.store.close()
    later = World(tmp_path, routine("a", api=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(later.service.run)
        nursery.cancel_scope.cancel()
    after = later.service.run_record(rec["id"])
    assert after["status"] == "daemon_restarted" and "can be resumed" in after["error"]
    assert later.service.session_runs == {rec["session_id"]: rec["id"]}


async def test_report_outcome_and_auto_answers(tmp_path, autojump_clock):
    world = World(tmp_path, routine("a", api=True))
    answers = []
    world.sessions.auto_answer = lambda session, pending, answer=None: answers.append((pending["tool_name"], answer))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.service.run)
        rec = world.service.offer(world.service.routines["a"], "api")
        await trio.sleep(1)
        session = world.sessions.dispatched[0]
        for hook in world.sessions.on_permission:
            assert hook(session, {"tool_name": "Bash", "kind": "permission", "request_id": "1"})
            assert hook(session, {"tool_name": "AskUserQuestion", "kind": "question", "request_id": "2"})
        world.service.report_outcome(session.id, "done", "fixed the flaky test", ["https://x/pr/1"])
        world.sessions.end(session)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert answers == [("Bash", None), ("AskUserQuestion", "nobody is watching this run: choose the safest "
                                                           "option and say what you chose")]
    done = world.service.run_record(rec["id"])
    assert (done["status"], done["outcome"], done["summary"]) == ("finished", "done", "fixed the flaky test")
    assert session.outcome == "done"
