"""The cluster's pure parts (SPEC §14): [cluster] config, ids and queues, the transcript log's
records (batches, parts, exactly-once offsets), the payloads' sealing and its key file, a routine
run's workspace on a worker, and the worker's systemd unit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bgcore.config import ConfigError, parse_config
from bgd.cluster import protocol as p

ROOT = Path(__file__).parent.parent


def test_cluster_config_defaults_and_checks():
    assert parse_config("").cluster is None
    cluster = parse_config('[cluster]\ntemporal = "10.0.0.5:7233"\n').cluster
    assert (cluster.temporal, cluster.namespace, cluster.task_queue, cluster.heartbeat_s, cluster.key_file) == \
        ("10.0.0.5:7233", "default", "bgagents", 10.0, "cluster.key")
    assert cluster.heartbeat_timeout_s == 30.0
    config = parse_config('[cluster]\ntemporal = "h:1"\nheartbeat_s = 1\ntask_quue = "x"\n')
    assert config.cluster.heartbeat_s == 1.0
    assert any("task_quue" in w and "task_queue" in w for w in config.warnings)
    for text, message in (('[cluster]\nnamespace = "x"\n', "needs temporal"),
                          ('[cluster]\ntemporal = "nohost"\n', "host:port"),
                          ('[cluster]\ntemporal = "h:99999"\n', "host:port"),
                          ('[cluster]\ntemporal = "h:1"\nheartbeat_s = 0\n', "at least 0.5"),
                          ('[cluster]\ntemporal = "h:1"\nheartbeat_s = 0.2\n', "at least 0.5"),
                          ('[cluster]\ntemporal = "h:1"\ntask_queue = " "\n', "must not be empty"),
                          ('[cluster]\ntemporal = "h:1"\nkey_file = ""\n', "must not be empty"),
                          ('[cluster]\ntemporal = 7233\n', "must be a string")):
        with pytest.raises(ConfigError, match=message):
            parse_config(text)


def test_ids_and_queues():
    assert p.worker_queue("bgagents", "w1") == "bgagents@w1"
    assert p.log_queue("bgagents") == "bgagents.logs"
    assert p.session_run_id("me-1a2b3c", "k3v9q0ab", 2) == "bgagents/me-1a2b3c/k3v9q0ab/2"
    assert p.keyed_run_id("routine/triage/github/72d3162e-cc78") == "bgagents/routine/triage/github/72d3162e-cc78"
    log = p.log_id("me", "w1", "ab12", 7)
    assert p.log_base(log) == ("bgagents-log/me/w1/ab12", 7)
    assert p.valid_name("gpu-box.2_a") and not p.valid_name("a/b") and not p.valid_name("")


def test_a_run_workflows_task_timeout_ends_before_its_heartbeat_timeout():
    # A workflow task taken by a worker that dies must time out before the run is found lost.
    for heartbeat in (0.5, 1.0, 3.0, 10.0, 60.0):
        timeout = p.task_timeout_s(heartbeat)
        assert 1.0 <= timeout <= 10.0 and timeout < 3 * heartbeat


def test_run_spec_round_trips_and_ignores_unknown_fields():
    spec = p.RunSpec(owner="me", session_id="s", backend="claude", launch={"argv": ["claude"]}, text="hi",
                     worker="w2", heartbeat_s=1.0)
    again = p.RunSpec.from_json(dict(spec.to_json(), added_later=True))
    assert again == spec


def _wire(items: list[bytes]) -> list[list]:
    """What the owner reads: the items of the signals the worker sent."""
    payload, count = p.take_batch(list(items), limit=1 << 30)
    assert count == len(items)
    return json.loads(payload)["items"]


def test_a_long_record_travels_in_parts_and_comes_back_whole():
    big = {"text": "x\"é\n" * (p.CHUNK_BYTES // 2) + "end", "n": 1}
    items = p.encode_record("run", 4, "record", ["agent", big])
    assert len(items) > 1 and all(len(item) <= p.CHUNK_BYTES + 200 for item in items)
    small = p.encode_record("run", 5, "assistant", "hi")
    records = list(p.Reassembler().feed(_wire(items + small)))
    assert [(r.offset, r.op) for r in records] == [(4, "record"), (5, "assistant")]
    assert records[0].arg == ["agent", big]


def test_parts_whose_head_was_not_seen_are_dropped():
    items = p.encode_record("run", 4, "record", "y" * (p.CHUNK_BYTES + 1))
    assert list(p.Reassembler().feed(_wire(items[1:]))) == []


@given(st.lists(st.text(max_size=300), min_size=1, max_size=60), st.integers(200, 5000))
def test_batches_keep_every_item_in_order_under_the_limit(texts, limit):
    pending = [item for i, t in enumerate(texts) for item in p.encode_record("run", i, "assistant", t)]
    out = []
    while pending:
        payload, count = p.take_batch(pending, limit)
        assert count and (count == 1 or len(payload) <= limit + 20)
        out += json.loads(payload)["items"]
        del pending[:count]
    assert out == [["run", i, "assistant", t] for i, t in enumerate(texts)]


def test_offsets_accept_each_record_once_in_order():
    offsets = p.Offsets(3)
    assert not offsets.accept(2)           # applied before a restart
    assert offsets.accept(3) and offsets.accept(4)
    assert not offsets.accept(4)           # a signal sent twice
    with pytest.raises(p.GapError):
        offsets.accept(9)


def test_worker_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    bgd = shutil.which("bgd")
    assert bgd, "bgd is not installed (pip install -e .)"
    text = (ROOT / "contrib" / "systemd" / "bgd-worker.service").read_text()
    text, count = re.subn(r"^ExecStart=/usr/local/bin/bgd ", f"ExecStart={bgd} ", text, flags=re.M)
    assert count == 1
    unit = tmp_path / "bgd-worker.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and "bgd-worker" not in output:
        pytest.skip(f"systemd-analyze verify cannot run here: {output[:200]}")
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "bgd-worker" in line], output


def test_ls_and_the_agent_view_say_where_a_session_runs():
    from datetime import datetime, timezone

    from bgctl import agents_model
    from bgctl.render import session_table, where_cell
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    base = {"id": "k3v9q0ab", "name": None, "cwd": "/src/app", "agent": "claude", "state": "working",
            "waiting_for": None, "error": None, "created_at": "2026-12-01T00:00:00+00:00",
            "updated_at": "2026-12-01T00:00:00+00:00", "cost_usd": 0.0, "last_message": "hi", "prompt": "hi",
            "pinned": False, "origin": "dispatch"}
    local = dict(base, where="local", worker=None)
    waiting = dict(base, where="cluster", worker=None)
    placed = dict(base, where="cluster", worker="gpu-1")
    assert [where_cell(s) for s in (local, waiting, placed)] == ["here", "cluster", "cluster:gpu-1"]
    assert "cluster:gpu-1" in session_table([placed]) and "WHERE" in session_table([placed])
    assert "@gpu-1" in agents_model.row_text(placed, now, 100)
    assert "@" not in agents_model.row_text(local, now, 100)


# -- the payloads' sealing (bgd.cluster.codec) -------------------------------------------------------

def _codec(key: bytes, who: str = "worker 'w1'", **kw):
    from bgd.cluster.codec import ClusterCodec
    return ClusterCodec(key, path="/keys/cluster.key", who=who, **kw)


def test_a_key_file_is_made_once_private_and_read_back(tmp_path):
    from bgd.cluster.codec import KeyFileError, ensure_key, key_path, read_key
    path = tmp_path / "config" / "cluster.key"
    key = ensure_key(path)
    assert len(key) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert ensure_key(path) == key == read_key(path)           # made once
    assert len(path.read_text().strip()) == 44                  # one line of base64
    assert key_path(tmp_path, "cluster.key") == tmp_path / "cluster.key"
    assert key_path(tmp_path, "/etc/bgagents/k") == Path("/etc/bgagents/k")
    with pytest.raises(KeyFileError, match=r"cannot read the cluster key file .*absent.*No such file"):
        read_key(tmp_path / "absent")
    (tmp_path / "bad").write_text("not a key\n")
    with pytest.raises(KeyFileError, match="is not a cluster key file"):
        read_key(tmp_path / "bad")


def test_sealed_payloads_open_with_the_key_only():
    import os

    from temporalio.api.common.v1 import Payload

    from bgd.cluster.codec import KeyMismatch
    key, other = os.urandom(32), os.urandom(32)
    heard: list[str] = []
    mine, theirs = _codec(key, on_mismatch=heard.append), _codec(other, who="the owning daemon")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"env": {"API_KEY": "s3cr3t"}}')
    sealed = theirs.seal(plain)
    assert b"s3cr3t" not in sealed.SerializeToString() and sealed.metadata["encoding"] == b"binary/encrypted"
    assert theirs.open(sealed) == plain and theirs.open_data(theirs.seal(plain)) == plain.data
    assert theirs.seal(plain).data != sealed.data                 # a fresh nonce each time
    with pytest.raises(KeyMismatch, match=r"worker 'w1' cannot decrypt this run: its key \(file /keys/cluster.key, "
                                          r"id \w{16}\) is not the cluster key it was encrypted with"):
        mine.open(sealed)
    assert len(heard) == 1 and "copy the owning daemon's key file" in heard[0]
    with pytest.raises(KeyMismatch, match="not encrypted with the cluster key"):
        mine.open(plain)                                          # refused, and says nothing of the key
    changed = mine.seal(plain)
    changed.data = changed.data[:-1] + bytes([changed.data[-1] ^ 1])
    with pytest.raises(KeyMismatch, match="changed on the way"):
        mine.open(changed)
    assert len(heard) == 1


def test_sealing_costs_microseconds_per_payload():
    """What the owner pays per log signal (one payload per batch of lines), on this machine's CPU."""
    import os
    import time

    from temporalio.api.common.v1 import Payload
    sealed = _codec(os.urandom(32))
    for size in (200, 4000, 64000):
        payload = Payload(metadata={"encoding": b"json/plain"}, data=os.urandom(size))
        rounds = 2000
        started = time.process_time()
        for _ in range(rounds):
            sealed.open(sealed.seal(payload))
        per = (time.process_time() - started) / rounds
        print(f"seal + open of a {size}-byte payload: {per * 1e6:.1f} µs CPU")
        assert per < 0.01   # far from anything a line's delivery could notice


# -- a routine run's workspace on a worker (bgd.cluster.workspaces) -------------------------------------

def test_call_trio_runs_trio_code_from_asyncio_and_cancels_it():
    import asyncio

    import trio

    from bgd.cluster.workspaces import call_trio
    cancelled = []

    async def slow():
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            cancelled.append(True)
            raise

    async def main():
        assert await call_trio(trio.to_thread.run_sync, lambda: 42) == 42
        task = asyncio.ensure_future(call_trio(slow))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cancelled == [True]


def test_a_workspace_is_cloned_kept_and_removed(tmp_path):
    import asyncio

    from routine_helpers import git, make_remote

    from bgd.cluster.workspaces import MARKER, Workspaces
    from bgd.routines.workspace import CloneFailed
    remote = make_remote(tmp_path)
    clock = [1000.0]
    spaces = Workspaces(tmp_path / "worker", "w1", now=lambda: clock[0])
    other = Workspaces(tmp_path / "worker", "w2", now=lambda: clock[0])   # another worker, same state dir

    async def main():
        request = {"run_id": "r1", "repos": [{"url": str(remote), "ref": None}], "push": ["claude/*"], "keep_s": 60}
        run_dir = spaces.hold(spaces.run_dir("me", "r1"))
        made, clones = await spaces.prepare("me", request)
        assert made == run_dir == tmp_path / "worker" / "runs" / "me" / "r1"
        assert clones[0].path == run_dir / "app" and git("config", "core.hooksPath", cwd=run_dir / "app")
        assert spaces.of(str(run_dir / "app" / "src")) == run_dir and spaces.of("/elsewhere") is None
        assert await spaces.prune() == 3600 and run_dir.exists()       # in use
        spaces.release(run_dir)
        assert json.loads((run_dir / MARKER).read_text())["ended_at"] == 1000.0
        clock[0] = 1030.0
        assert await spaces.prune() == 30.0 and run_dir.exists()       # kept 60 s after it ended
        spaces.hold(spaces.of(str(run_dir / "app")))                     # a reply works in it
        clock[0] = 2000.0
        assert await spaces.prune() and run_dir.exists()
        await other.prune(orphans=True)
        assert run_dir.exists()                                          # not the other worker's to end
        spaces.release(run_dir)
        clock[0] = 2060.0
        await spaces.prune()
        assert not run_dir.exists()
        # A clone that fails says git's own message; what was made is removed like the rest.
        bad = {"run_id": "r2", "repos": [{"url": str(tmp_path / "nowhere.git")}], "keep_s": 0}
        failed = spaces.hold(spaces.run_dir("me", "r2"))
        with pytest.raises(CloneFailed, match="does not exist"):
            await spaces.prepare("me", bad)
        spaces.release(failed)
        await spaces.prune()
        assert not failed.exists()
        # A workspace whose worker died mid-run ends when the next worker first looks.
        orphan = spaces.run_dir("me", "r3")
        orphan.mkdir(parents=True)
        (orphan / MARKER).write_text(json.dumps({"owner": "me", "run_id": "r3", "keep_s": 0, "ended_at": None,
                                                 "worker": "w1"}))
        await spaces.prune()
        await other.prune(orphans=True)
        assert orphan.exists()
        await spaces.prune(orphans=True)
        assert not orphan.exists()

    asyncio.run(main())



def test_a_daemon_without_cluster_never_loads_the_temporal_sdk(tmp_path):
    # temporalio (and the codec's cryptography) cost the daemon ~25 MB of memory and ~150 ms at
    # start: only a daemon with [cluster] loads them.
    from conftest import modules_a_daemon_loads
    assert modules_a_daemon_loads(tmp_path, {"temporalio", "cryptography"}) == []
