// Unit tests of the pure status formatting and quick-pick building (no VS Code needed):
// `npm test` compiles and runs them with node's own test runner.

import { strict as assert } from "node:assert";
import { test } from "node:test";
import {
  SessionView,
  Status,
  actionsFor,
  needsAttention,
  sessionItems,
  sessionsIn,
  statusBarText,
  statusTooltip,
  withText,
} from "../status";

function session(id: string, state: string, extra: Partial<SessionView> = {}): SessionView {
  return { id, state, title: `task ${id}`, waiting_for: null, pending: null, ...extra };
}

function status(sessions: SessionView[], text: string, connected = true): Status {
  const counts: Record<string, number> = {
    needs_input: 0, working: 0, sleeping: 0, completed: 0, failed: 0, stopped: 0,
  };
  for (const s of sessions) {
    counts[s.state] += 1;
  }
  return { connected, text, counts, busy: counts.working + counts.needs_input, total: sessions.length, sessions };
}

const asking = session("k3v9q0ab", "needs_input", {
  waiting_for: "permission",
  pending: { request_id: "r1", kind: "permission", tool_name: "Bash", text: "Bash: npm test" },
});
const question = session("q0000001", "needs_input", {
  waiting_for: "question",
  pending: { request_id: "r2", kind: "question", text: "Deploy now?" },
});

test("status bar text follows the summary bgls sends", () => {
  assert.equal(statusBarText(undefined), "$(loading~spin) bgagents");
  assert.equal(statusBarText(status([asking, session("w1", "working")], "1 needs input · 1 working")),
    "$(bell-dot) 1 needs input · 1 working");
  assert.equal(statusBarText(status([session("w1", "working")], "1 working")), "$(sync~spin) 1 working");
  assert.equal(statusBarText(status([session("s1", "sleeping")], "1 sleeping")), "$(clock) 1 sleeping");
  assert.equal(statusBarText(status([session("c1", "completed")], "idle")), "$(hubot) idle");
  assert.equal(statusBarText(status([], "bgd not running", false)), "$(debug-disconnect) bgd not running");
});

test("attention only when someone is needed", () => {
  assert.equal(needsAttention(status([asking], "1 needs input")), true);
  assert.equal(needsAttention(status([session("w1", "working")], "1 working")), false);
  assert.equal(needsAttention(status([asking], "bgd not running", false)), false);
});

test("tooltip lists sessions, or says the daemon is down", () => {
  assert.match(statusTooltip(status([asking], "1 needs input")), /k3v9q0ab {2}needs permission {2}task k3v9q0ab/);
  const down = { ...status([], "bgd not running", false), detail: "no daemon answers on /x" };
  assert.match(statusTooltip(down), /not reachable \(no daemon answers on \/x\)/);
});

test("quick-pick items carry the session id and what it waits for", () => {
  const items = sessionItems(status([asking, session("w1", "working", { last_message: "running tests" })], "x"));
  assert.deepEqual(items.map((i) => i.sessionId), ["k3v9q0ab", "w1"]);
  assert.equal(items[0].description, "k3v9q0ab · needs permission");
  assert.equal(items[0].detail, "Bash: npm test");
  assert.equal(items[1].detail, "running tests");
  assert.deepEqual(sessionItems(status([asking], "x", false)), []);
});

test("actions depend on the state and name the exact request", () => {
  const approve = actionsFor(asking)[0];
  assert.equal(approve.command, "bgagents.approve");
  assert.deepEqual(approve.args, [{ id: "k3v9q0ab", request_id: "r1" }]);
  assert.deepEqual(actionsFor(asking).map((a) => a.command),
    ["bgagents.approve", "bgagents.approve", "bgagents.deny", "bgagents.openTranscript", "bgagents.stop"]);

  const answer = actionsFor(question)[0];
  assert.equal(answer.needsText, "Deploy now?");
  assert.deepEqual(withText(answer, "yes"), ["q0000001", "yes", "r2"]);

  assert.deepEqual(actionsFor(session("w1", "working")).map((a) => a.command),
    ["bgagents.openTranscript", "bgagents.stop"]);
  const followUp = actionsFor(session("c1", "completed"))[0];
  assert.deepEqual(withText(followUp, "and the docs"), ["c1", "and the docs"]);
});

test("sessionsIn filters by state", () => {
  const st = status([asking, session("w1", "working")], "x");
  assert.deepEqual(sessionsIn(st, "needs_input").map((s) => s.id), ["k3v9q0ab"]);
  assert.equal(sessionsIn(st).length, 2);
  assert.deepEqual(sessionsIn(undefined), []);
});
