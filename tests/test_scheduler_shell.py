"""The trio shell of desktop tasks (task_runner.TaskService) on trio's virtual clock, with a fake
`dispatch`: on-time fires, suspend/resume (the wall clock jumps while trio's clock does not), the
overlap and cap policies end to end through the store, and `approve --always` remembered per task."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import trio

from bgcore.config import Config
from bgd.events import EventBus
from bgd.store import Store
from bgd.tasks.runner import TaskService

UTC = timezone.utc
BASE = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)


class FakeSessions:
    """What TaskService needs of SessionManager: dispatch, stop, the hooks."""

    def __init__(self, clock):
        self.clock = clock
        self.sessions: dict[str, SimpleNamespace] = {}
        self.on_turn_end, self.on_session_end, self.on_always = [], [], []
        self.dispatched: list[SimpleNamespace] = []
        self._ids = itertools.count()

    async def dispatch(self, prompt, cwd, **kw):
        session = SimpleNamespace(id=f"s{next(self._ids):07d}", prompt=prompt, cwd=cwd, state="working",
                                  created_at=self.clock().isoformat(), updated_at=self.clock().isoformat(),
                                  at=self.clock(), **kw)
        self.sessions[session.id] = session
        self.dispatched.append(session)
        return session

    def end(self, session, state="completed"):
        session.state = state
        session.updated_at = self.clock().isoformat()
        for hook in self.on_turn_end:
            hook(session)

    async def stop(self, session, reason="stopped"):
        session.state = "stopped"
        for hook in self.on_session_end:
            hook(session, "stopped")


class World:
    """A TaskService over a real store and a wall clock we can jump (a suspend, an NTP step)."""

    def __init__(self, tmp_path: Path, tasks_toml: str, config: Config | None = None):
        self.jump = timedelta()
        self.origin = trio.current_time()
        self.config = config or Config(task_jitter=False, max_concurrent_runs=4)
        (tmp_path / "config").mkdir(exist_ok=True)
        (tmp_path / "config" / "tasks.toml").write_text(tasks_toml.replace("CWD", str(tmp_path)))
        self.tmp_path = tmp_path
        self.store = Store(tmp_path / "state" / "bgd.sqlite3")
        self.bus = EventBus(self.store)
        self.sessions = FakeSessions(self.now)
        self.service = TaskService(store=self.store, bus=self.bus, sessions=self.sessions, config=lambda: self.config,
                                   config_dir=tmp_path / "config", state_dir=tmp_path / "state", now=self.now,
                                   tz=ZoneInfo("UTC"), run_sync=self.inline)

    @staticmethod
    async def inline(fn, *args):
        """git on the trio thread: the virtual clock cannot run ahead of it."""
        return fn(*args)

    def now(self) -> datetime:
        return BASE + timedelta(seconds=trio.current_time() - self.origin) + self.jump

    def history(self, name):
        return [(r["due_at"][11:16], r["status"], r["reason"] or "", r["catch_up"]) for r in self.service.history(name)]


def task(name: str, schedule: str, **extra) -> str:
    lines = [f"[tasks.{name}]", f'prompt = "do {name}"', 'cwd = "CWD"', f'schedule = "{schedule}"']
    lines += [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false") for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


async def start(world: World, nursery) -> None:
    await nursery.start(world.service.run)


async def sleep_until(world: World, when: datetime) -> None:
    await trio.sleep((when - world.now()).total_seconds())


async def test_fires_on_time_in_a_fresh_session(tmp_path, autojump_clock):
    world = World(tmp_path, task("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(hour=11, minute=0, second=1))
        world.sessions.end(world.sessions.dispatched[0])
        await sleep_until(world, BASE.replace(hour=12, minute=0, second=1))
        nursery.cancel_scope.cancel()
    fired = [(s.at.strftime("%H:%M:%S.%f"), s.origin, s.cwd, s.prompt) for s in world.sessions.dispatched]
    assert fired == [
        ("11:00:00.000000", "task:hourly", str(tmp_path), "do hourly"),
        ("12:00:00.000000", "task:hourly", str(tmp_path), "do hourly")]
    assert world.history("hourly") == [("12:00", "ran", "", False), ("11:00", "ran", "", False)]


async def test_a_suspend_fires_promptly_on_resume_with_one_catch_up(tmp_path, autojump_clock):
    world = World(tmp_path, task("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(hour=11, minute=10))
        for s in world.sessions.dispatched:
            world.sessions.end(s)
        # The machine sleeps from 11:10 to 14:10: the wall clock jumps, trio's monotonic clock does not.
        world.jump += timedelta(hours=3)
        resumed = trio.current_time()
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    catch_up = world.sessions.dispatched[-1]
    assert len(world.sessions.dispatched) == 2
    assert catch_up.at - world.jump - BASE <= timedelta(hours=1, minutes=10, seconds=1.01)  # within a second
    assert world.history("hourly") == [("14:00", "ran", "", True), ("13:00", "skipped", "asleep", False),
                                       ("12:00", "skipped", "asleep", False), ("11:00", "ran", "", False)]
    assert resumed is not None


async def test_restart_catches_up_once_and_records_daemon_down(tmp_path, autojump_clock):
    world = World(tmp_path, task("hourly", "hourly"))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    world.store.close()
    # bgd is down for three hours; a new daemon reads the persisted last-seen time.
    later = World(tmp_path, task("hourly", "hourly"))
    later.jump = timedelta(hours=3)
    async with trio.open_nursery() as nursery:
        await start(later, nursery)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert later.history("hourly") == [("13:00", "ran", "", True), ("12:00", "skipped", "daemon_down", False),
                                       ("11:00", "skipped", "daemon_down", False)]


async def test_overlap_policies_through_the_shell(tmp_path, autojump_clock):
    toml = (task("skipper", "every 10 minutes") + task("buffered", "every 10 minutes", overlap="buffer_one")
            + task("replacer", "every 10 minutes", overlap="replace"))
    world = World(tmp_path, toml)
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(minute=30, second=1))  # fires at :10, :20, :30; nothing ends
        by_task = {}
        for s in world.sessions.dispatched:
            by_task.setdefault(s.origin, []).append(s)
        world.sessions.end(by_task["task:buffered"][0])
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert [h[1:3] for h in world.history("skipper")] == [("skipped", "previous_run_active")] * 2 + [("ran", "")]
    assert [h[1:3] for h in world.history("buffered")] == [
        ("skipped", "previous_run_active"), ("ran", "buffer_one"), ("ran", "")]
    assert [h[1] for h in world.history("replacer")] == ["ran"] * 3
    assert [s.state for s in by_task["task:replacer"]] == ["stopped", "stopped", "working"]


async def test_the_cap_queues_runs_until_a_slot_frees(tmp_path, autojump_clock):
    toml = "".join(task(f"t{i}", "every 10 minutes") for i in range(3))
    world = World(tmp_path, toml, Config(task_jitter=False, max_concurrent_runs=2))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(minute=10, second=1))
        assert len(world.sessions.dispatched) == 2
        assert world.history("t2") == [("10:10", "queued", "concurrency_limit", False)]
        world.sessions.end(world.sessions.dispatched[0])
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert len(world.sessions.dispatched) == 3
    assert world.history("t2")[0][1] == "ran"


async def test_approve_always_is_remembered_for_the_task(tmp_path, autojump_clock):
    world = World(tmp_path, task("needs-bash", "manual"))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await world.service.run_now("needs-bash")
        first = world.sessions.dispatched[0]
        for hook in world.sessions.on_always:
            hook(first, "Bash")
        world.sessions.end(first)
        await world.service.run_now("needs-bash")
        nursery.cancel_scope.cancel()
    assert world.sessions.dispatched[1].always_allow == ["Bash"]
    assert world.service.task_json(world.service.tasks["needs-bash"])["always_allow"] == ["Bash"]


async def test_one_time_task_disables_itself_and_shows_as_ran(tmp_path, autojump_clock):
    world = World(tmp_path, task("once", "once at 2026-06-01 10:05") + "# trailing comment\n")
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(minute=6))
        nursery.cancel_scope.cancel()
    text = (tmp_path / "config" / "tasks.toml").read_text()
    assert "enabled = false" in text and "# trailing comment" in text
    assert world.service.task_json(world.service.tasks["once"])["status"] == "ran"
    assert world.history("once") == [("10:05", "ran", "", False)]


def git_repo(path: Path) -> Path:
    import os
    import subprocess
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "first"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, env=env, capture_output=True)
    return path


async def test_worktrees_go_keep_worktrees_days_after_their_session_ended_never_while_live(tmp_path, autojump_clock):
    git_repo(tmp_path)
    world = World(tmp_path, task("ends", "once at 2026-06-01 10:05", worktree=True)
                  + task("lives", "once at 2026-06-01 10:06", worktree=True),
                  Config(task_jitter=False, keep_worktrees_days=7))
    async with trio.open_nursery() as nursery:
        await start(world, nursery)
        await sleep_until(world, BASE.replace(minute=10))
        ends, lives = world.sessions.dispatched
        assert Path(ends.cwd).is_dir() and Path(lives.cwd).is_dir() and ends.cwd != lives.cwd
        ended = world.now()
        world.sessions.end(ends)                         # `lives` stays working
        await sleep_until(world, ended + timedelta(days=7, minutes=-1))
        assert Path(ends.cwd).is_dir()                   # a minute early: kept
        await sleep_until(world, ended + timedelta(days=7, seconds=5))
        assert not Path(ends.cwd).exists()
        [row] = world.service.history("ends")
        pruned_at = datetime.fromisoformat(row["worktree_pruned_at"])
        assert timedelta(days=7) <= pruned_at - ended <= timedelta(days=7, seconds=2)
        await sleep_until(world, BASE + timedelta(days=30))
        assert Path(lives.cwd).is_dir()                  # a live session's worktree is never removed
        world.sessions.end(lives, "stopped")
        await sleep_until(world, world.now() + timedelta(days=7, seconds=5))
        assert not Path(lives.cwd).exists()
        nursery.cancel_scope.cancel()
    import subprocess
    listed = subprocess.run(["git", "-C", str(tmp_path), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.splitlines()) == 1, listed         # only the main one: git forgot both
