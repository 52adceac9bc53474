"""Routine environments piece by piece, with real processes: the filtering proxy (tinyproxy and its
bridge, systemd-socket-proxyd or socat), the bubblewrap sandbox, the setup script's runner, the template's copies, and the
scoped daemon socket of a confined run."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from bgcore.confinement import SOCAT, Bridge, Probe, find_bridge, probe, probe_argv
from bgd.environments.proxy import FilteringProxy, ProxyError
from bgd.environments.sandbox import Sandbox, bwrap_argv, proxy_env
from bgd.environments.setup import check_syntax, copy_workspace, make_template, run_script
from conftest import wait_until
from env_helpers import Servers, bridges, hosts_file, named_prefix, need_confinement, need_names, servers  # noqa: F401
from routine_helpers import git, make_remote

PY = sys.executable


def fetch(url: str, proxy_port: int | None, context: ssl.SSLContext | None = None) -> tuple[int | str, str]:
    handlers = [urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}",
                                             "https": f"http://127.0.0.1:{proxy_port}"} if proxy_port else {})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return "error", str(exc.reason)


def proxy_command(tmp_path: Path) -> tuple[str, ...]:
    return (*named_prefix(hosts_file(tmp_path)), "tinyproxy")


async def test_the_proxy_lets_through_exactly_the_allowed_hosts_and_counts_the_rest(tmp_path, servers):
    need_confinement()
    need_names()
    seen = []
    proxy = FilteringProxy(("allowed.test",), tmp_path / "proxy", policy='["allowed.test"]',
                           command=proxy_command(tmp_path), on_blocked=seen.append)
    async with trio.open_nursery() as nursery:
        await proxy.start(nursery)
        try:
            status, body = await trio.to_thread.run_sync(fetch, servers.url("allowed.test"), proxy.port)
            assert (status, body) == (200, "hello from allowed.test\n")
            for _ in range(2):
                status, body = await trio.to_thread.run_sync(fetch, servers.url("blocked.test"), proxy.port)
                assert status == 403
                assert "bgagents:" in body and 'is not allowed by network = ["allowed.test"]' in body
            status, _ = await trio.to_thread.run_sync(fetch, "http://example.com/", proxy.port)
            assert status == 403
            # The socket the sandbox sees leads to the same proxy.
            assert proxy.socket_path.is_socket() and oct(proxy.socket_path.stat().st_mode & 0o777) == "0o600"
        finally:
            await proxy.close()
    assert dict(proxy.blocked) == {"blocked.test": 2, "example.com": 1}
    assert seen == ["blocked.test", "blocked.test", "example.com"]


async def test_https_connect_is_filtered_by_host(tmp_path):
    need_confinement()
    need_names()
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("allowed.test", "blocked.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    tls = Servers(tls=server_context)
    proxy = FilteringProxy(("allowed.test",), tmp_path / "proxy", policy='["allowed.test"]',
                           command=proxy_command(tmp_path))
    try:
        async with trio.open_nursery() as nursery:
            await proxy.start(nursery)
            try:
                status, body = await trio.to_thread.run_sync(fetch, tls.url("allowed.test"), proxy.port, client_context)
                assert (status, body) == (200, "hello from allowed.test\n")
                status, reason = await trio.to_thread.run_sync(fetch, tls.url("blocked.test"), proxy.port,
                                                               client_context)
                assert status == "error" and "403" in reason
            finally:
                await proxy.close()
    finally:
        tls.close()
    assert dict(proxy.blocked) == {"blocked.test": 1}


async def test_a_taken_port_and_a_missing_proxy_are_clear_errors(tmp_path):
    need_confinement()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = FilteringProxy((), tmp_path / "proxy", policy='"none"', port=port)
        async with trio.open_nursery() as nursery:
            with pytest.raises(ProxyError) as caught:
                await proxy.start(nursery)
            await proxy.close()
    assert str(caught.value) == (f"the filtering proxy could not listen on 127.0.0.1:{port}: the port is already "
                                 "taken by another program; stop it or leave the port to bgd")
    missing = FilteringProxy((), tmp_path / "p2", policy='"none"', command=("/nonexistent/tinyproxy",))
    async with trio.open_nursery() as nursery:
        with pytest.raises(ProxyError, match="'/nonexistent/tinyproxy' is not installed; install tinyproxy"):
            await missing.start(nursery)


def test_the_probe_says_what_is_missing_and_how_to_fix_it(tmp_path):
    absent = probe("/nonexistent/bwrap")
    assert not absent.ok and "bubblewrap ('/nonexistent/bwrap') is not installed" in absent.reason
    assert "apt-get install bubblewrap" in absent.fix
    failing = tmp_path / "bwrap"
    failing.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the "
                       "kernel does not allow non-privileged user namespaces' >&2\nexit 1\n")
    failing.chmod(0o755)
    refused = probe(str(failing))
    assert not refused.ok and "cannot make a sandbox here: bwrap: No permissions" in refused.reason
    assert "unprivileged_userns_clone" in refused.fix
    if Path("/usr/bin/bwrap").exists():
        assert not probe("bwrap", proxy="/nonexistent/tinyproxy").ok
        assert "--unshare-net" in probe_argv("bwrap")
        old = tmp_path / "tinyproxy"
        old.write_text("#!/bin/sh\necho 'tinyproxy 1.10.0'\n")
        old.chmod(0o755)
        too_old = probe("bwrap", proxy=str(old))
        if probe().ok:
            assert not too_old.ok and too_old.reason == (f"{old} is tinyproxy 1.10.0, older than 1.11: its configuration "
                                                         "has no FilterType, so it cannot be a confined run's proxy")
            assert "tinyproxy 1.11 or later" in too_old.fix


def run_in(sandbox: Sandbox, command: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(bwrap_argv(sandbox, command), capture_output=True, text=True, timeout=30, **kw)


def test_a_confined_sandbox_sees_only_what_it_may(tmp_path):
    need_confinement()
    base = Path(os.environ.get("BGAGENTS_TEST_OUTSIDE_TMP", "/var/tmp"))
    outside = Path(__import__("tempfile").mkdtemp(prefix="bgagents-env-", dir=base))
    try:
        workspace, state, private_tmp = outside / "state" / "runs" / "r1", outside / "state", outside / "tmp"
        other_run, secret_dir, secret_file = state / "runs" / "r2", outside / "home" / ".ssh", outside / "home" / ".netrc"
        granted = outside / "home" / ".config" / "gh"
        for d in (workspace, other_run, private_tmp, secret_dir, granted):
            d.mkdir(parents=True)
        (other_run / "notes.txt").write_text("other run")
        (secret_dir / "id_ed25519").write_text("PRIVATE KEY")
        secret_file.write_text("machine x password y")
        (granted / "hosts.yml").write_text("token: granted\n")
        sandbox = Sandbox(confined=True, binds=[(str(workspace), str(workspace))], tmp=str(private_tmp),
                          hidden=[(str(state), True), (str(secret_dir), True), (str(secret_file), False),
                                  (str(outside / "home" / ".config"), True)],
                          readable=[str(granted)], chdir=str(workspace))
        script = (f"echo hi > {workspace}/made.txt && echo in-tmp > /tmp/t.txt && "
                  f"(test -e {other_run}/notes.txt && echo seen || echo gone) && (cat {secret_dir}/id_ed25519 2>&1 || true) && "
                  f"(cat {secret_file}; echo '[netrc]') && cat {granted}/hosts.yml && "
                  f"(touch {outside}/home/x 2>&1 | grep -o 'Read-only file system' || echo writable) && "
                  f"{PY} -c 'import socket; s=socket.socket(); s.settimeout(2); "
                  f"print(s.connect_ex((\"1.1.1.1\", 80)) != 0)' && pwd")
        result = run_in(sandbox, ["bash", "-c", script])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "gone"                               # another run's workspace: not there
        assert "No such file or directory" in lines[1]          # ~/.ssh: an empty directory
        assert lines[2] == "[netrc]"                            # ~/.netrc: empty (/dev/null)
        assert lines[3] == "token: granted"                     # granted: readable
        assert lines[4] == "Read-only file system"              # the rest: read-only
        assert lines[5] == "True"                               # no network but the proxy
        assert lines[6] == str(workspace)
        assert (workspace / "made.txt").read_text() == "hi\n" and (private_tmp / "t.txt").read_text() == "in-tmp\n"
    finally:
        subprocess.run(["rm", "-rf", str(outside)])


def test_the_sandbox_shows_the_workspace_at_the_templates_path_and_ends_what_it_started(tmp_path):
    need_confinement()
    run, template = tmp_path / "runs" / "r1", tmp_path / "cache" / "template"
    (run / "app").mkdir(parents=True)
    (template / "app").mkdir(parents=True)
    (run / "app" / "mine.txt").write_text("the run's\n")
    marker = f"{time.monotonic_ns() % 10_000_000 + 40_000_000}"
    sandbox = Sandbox(confined=False, binds=[(str(run), str(template))], chdir=str(template / "app"))
    result = run_in(sandbox, ["bash", "-c", f"cat mine.txt; (setsid sleep {marker} &); echo started"])
    assert result.stdout.splitlines() == ["the run's", "started"], result.stderr
    wait_until(lambda: subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1,
               5, "the process the script left behind to be killed")


def test_proxy_env_points_everything_at_the_bridge():
    env = proxy_env(3128)
    assert env["HTTPS_PROXY"] == env["http_proxy"] == env["ALL_PROXY"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    argv = bwrap_argv(Sandbox(proxy_socket="/run/p.sock", daemon_socket="/run/d.sock", tmp="/x/tmp",
                              hidden=[("/tmp/state", True), ("/home/u/.netrc", False)]), ["agent", "--flag"])
    assert argv[:7] == ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc"]
    assert "/tmp/state" not in argv   # under the private /tmp: hidden already
    assert ["--ro-bind", "/dev/null", "/home/u/.netrc"] == argv[argv.index("/home/u/.netrc") - 2:argv.index("/home/u/.netrc") + 1]
    assert argv[argv.index("--unshare-net") - 3:argv.index("--unshare-net")] == ["--bind", "/run/d.sock",
                                                                               "/tmp/.bgagents-daemon.sock"]
    assert argv[-2:] == ["agent", "--flag"]
    assert argv[-4].startswith("socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr,nodelay "
                               "UNIX-CONNECT:/tmp/.bgagents-proxy.sock & ")
    systemd = Bridge("systemd-socket-proxyd", "/usr/lib/systemd/systemd-socket-proxyd", "/usr/bin/systemd-socket-activate")
    argv = bwrap_argv(Sandbox(proxy_socket="/run/p.sock", proxy_port=8080, bridge=systemd), ["agent"])
    assert argv[-3].startswith("SYSTEMD_LOG_LEVEL=warning /usr/bin/systemd-socket-activate -l 127.0.0.1:8080 "
                               "/usr/lib/systemd/systemd-socket-proxyd /tmp/.bgagents-proxy.sock & ")
    assert systemd.unix_to_tcp("/r/proxy.sock", 4000) == ["/usr/bin/systemd-socket-activate", "-l", "/r/proxy.sock",
                                                           "/usr/lib/systemd/systemd-socket-proxyd", "127.0.0.1:4000"]
    assert SOCAT.unix_to_tcp("/r/proxy.sock", 4000) == ["socat", "UNIX-LISTEN:/r/proxy.sock,fork,mode=600,unlink-early",
                                                         "TCP:127.0.0.1:4000,nodelay"]
    assert SOCAT.env == {}


def test_the_bridge_is_systemd_socket_proxyd_where_installed_else_socat():
    def machine(*programs):
        paths = {name: f"/usr/bin/{name}" for name in programs}
        return dict(which=paths.get, executable=lambda path: "proxyd-in-lib" in programs
                    and path == "/usr/lib/systemd/systemd-socket-proxyd")

    everything = machine("socat", "systemd-socket-activate", "proxyd-in-lib")
    found = find_bridge("auto", **everything)
    assert found == Bridge("systemd-socket-proxyd", "/usr/lib/systemd/systemd-socket-proxyd",
                           "/usr/bin/systemd-socket-activate")
    assert find_bridge("socat", **everything) == Bridge("socat", "/usr/bin/socat")
    assert find_bridge("auto", **machine("socat", "proxyd-in-lib")) == Bridge("socat", "/usr/bin/socat")
    forced = find_bridge("systemd-socket-proxyd", **machine("socat", "proxyd-in-lib"))
    assert isinstance(forced, Probe) and not forced.ok
    assert forced.reason.startswith("systemd-socket-activate is not installed") and 'bridge = "auto"' in forced.fix
    neither = find_bridge("auto", **machine("systemd-socket-activate"))
    assert isinstance(neither, Probe) and "neither systemd-socket-proxyd nor socat ('socat')" in neither.reason
    assert "apt-get install socat" in neither.fix


_CHAIN_CLIENT = """
import json, ssl, sys, urllib.error, urllib.request
context = ssl.create_default_context(cafile=sys.argv[1])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": "http://127.0.0.1:3128",
                                                                  "https": "http://127.0.0.1:3128"}),
                                     urllib.request.HTTPSHandler(context=context))
out = []
for url in sys.argv[2:]:
    try:
        with opener.open(url, timeout=10) as response:
            out.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as exc:
        out.append([exc.code, exc.read().decode()])
    except urllib.error.URLError as exc:
        out.append(["error", str(exc.reason)])
print(json.dumps(out))
"""


@pytest.mark.parametrize("bridge", bridges())
async def test_a_sandbox_reaches_exactly_the_allowed_hosts_through_its_bridge(tmp_path, bridge):
    """The whole chain a confined run uses: the bridge in the sandbox, the Unix socket, the bridge
    outside, tinyproxy; HTTP and HTTPS CONNECT, allowed and refused (a refused host is counted)."""
    need_confinement()
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.2").configure_cert(server_context)
    plain, tls = Servers(), Servers(tls=server_context)
    (tmp_path / "client.py").write_text(_CHAIN_CLIENT)
    (tmp_path / "tmp").mkdir()
    port, tls_port = (s.servers["allowed.test"].server_address[1] for s in (plain, tls))
    urls = [f"http://localhost:{port}/", f"https://localhost:{tls_port}/", f"http://127.0.0.2:{port}/",
            f"https://127.0.0.2:{tls_port}/"]
    proxy = FilteringProxy(("localhost",), tmp_path / "proxy", policy='["localhost"]', bridge=bridge)
    try:
        async with trio.open_nursery() as nursery:
            await proxy.start(nursery)
            try:
                assert oct(proxy.socket_path.stat().st_mode & 0o777) == "0o600"
                sandbox = Sandbox(binds=[(str(tmp_path), str(tmp_path))], tmp=str(tmp_path / "tmp"),
                                  proxy_socket=str(proxy.socket_path), bridge=bridge, chdir=str(tmp_path))
                result = await trio.run_process(bwrap_argv(sandbox, [PY, str(tmp_path / "client.py"), str(cafile),
                                                                     *urls]), capture_stdout=True, capture_stderr=True,
                                                check=False)
            finally:
                await proxy.close()
    finally:
        plain.close()
        tls.close()
    assert result.returncode == 0, result.stderr.decode()
    if bridge.kind == "systemd-socket-proxyd":
        assert result.stderr == b""     # it says nothing when all is well (socat may log a peer's early close)
    out = __import__("json").loads(result.stdout)
    assert out[0] == out[1] == [200, "hello from allowed.test\n"]
    assert out[2][0] == 403 and f'bgagents: http://127.0.0.2:{port}/ is not allowed by network = ["localhost"]' in out[2][1]
    assert out[3][0] == "error" and "403" in out[3][1]
    assert dict(proxy.blocked) == {"127.0.0.2": 2}


async def test_the_setup_runner_gives_eof_kills_what_is_left_and_times_out(tmp_path):
    lines: list[str] = []
    marker = f"{time.monotonic_ns() % 10_000_000 + 50_000_000}"
    result = await run_script(["bash", "-c", f"read x; echo read=$?; sleep {marker} & echo bye"], cwd=str(tmp_path),
                              env=dict(os.environ), timeout_s=30, on_line=lines.append, own_group=True)
    assert (result.exit_code, lines) == (0, ["read=1", "bye"]) and not result.timed_out
    await trio.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1
    slow = await run_script(["bash", "-c", "echo start; sleep 30"], cwd=str(tmp_path), env=dict(os.environ),
                            timeout_s=0.5, on_line=lambda line: None, own_group=True)
    assert slow.timed_out and slow.exit_code is None and slow.output == "start"
    failed = await run_script(["bash", "-c", "echo oops >&2; exit 3"], cwd=str(tmp_path), env=dict(os.environ),
                              timeout_s=5, on_line=lambda line: None, own_group=True)
    assert (failed.exit_code, failed.output) == (3, "oops")


async def test_bash_n_catches_a_script_that_does_not_parse():
    assert await check_syntax("echo hi\nif true; then echo x; fi") is None
    problem = await check_syntax("echo hi\nif true; then\n")
    assert "syntax error" in problem


async def test_a_copy_shares_only_immutable_objects_and_is_brought_up_to_date(tmp_path):
    from bgcore.routines_file import Repo
    from bgd.routines.workspace import Clone, prepare
    remote = make_remote(tmp_path)
    template = tmp_path / "template"
    clones = await make_template(template, (Repo(str(remote)),), ("claude/*",), prepare)
    (template / "app" / "node_modules").mkdir()
    (template / "app" / "node_modules" / "dep.js").write_text("made by the setup")
    (template / "app" / "README.md").write_text("changed by the setup\n")
    seed = tmp_path / "app-seed"
    (seed / "NEW.md").write_text("new upstream\n")
    git("add", "NEW.md", cwd=seed)
    git("commit", "-q", "-m", "second", cwd=seed)
    git("push", "-q", str(remote), "main", cwd=seed)
    run = tmp_path / "runs" / "r1"
    copied = await copy_workspace(template, run, (Repo(str(remote)),), ("fix/*",), Clone)
    app = run / "app"
    assert copied[0].commit == git("rev-parse", "main", cwd=remote) != clones[0].commit
    assert (app / "NEW.md").exists() and (app / "README.md").read_text() == "# app\n"   # reset to the fresh ref
    assert (app / "node_modules" / "dep.js").read_text() == "made by the setup"          # the setup's work kept
    assert git("config", "core.hooksPath", cwd=app) == "../.bgagents-hooks"
    assert git("rev-parse", "--git-path", "hooks", cwd=app) == "../.bgagents-hooks"
    assert "fix/*" in (run / ".bgagents-hooks" / "pre-push").read_text()
    assert git("status", "--porcelain", cwd=app) == "?? node_modules/"
    objects = [p for p in (template / "app" / ".git" / "objects").rglob("*") if p.is_file()]
    shared = [p for p in objects if p.stat().st_nlink > 1]
    assert shared, "the object store is hard-linked"
    assert (app / ".git" / "index").stat().st_ino != (template / "app" / ".git" / "index").stat().st_ino
    assert (app / "node_modules" / "dep.js").stat().st_nlink == 1



async def test_a_closed_network_is_refused_for_a_routine_run_on_the_cluster(tmp_path):
    from types import SimpleNamespace

    from bgcore.config import Config
    from bgd.environments import Environments, SandboxUnavailable
    environments = Environments(state_dir=tmp_path / "state", config_dir=tmp_path / "config",
                                socket_path=tmp_path / "bgd.sock", config=Config)
    routine = SimpleNamespace(name="r", network="none", where="cluster", repos=(), push=(), grant=(), setup=None,
                              setup_path=None)
    rec = {"id": "run1", "routine": "r"}

    async def never(*args, **kw):
        raise AssertionError("nothing is cloned for a refused run")

    with pytest.raises(SandboxUnavailable, match=r"network = \"none\" is enforced only for runs on this machine, "
                                                 r"and this routine runs on where = 'cluster'"):
        await environments.prepare(rec, routine, tmp_path / "runs" / "run1", {}, str, rebuild=False,
                                   prepare_workspace=never, make_clone=None)
