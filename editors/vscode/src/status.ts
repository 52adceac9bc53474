// The pure part of the extension: status-bar text and quick-pick items from a
// `bgagents/status` notification.  No `vscode` import, so it is tested with plain node.

export interface Pending {
  request_id: string;
  kind: "permission" | "question" | string;
  tool_name?: string | null;
  text: string;
}

export interface SessionView {
  id: string;
  name?: string | null;
  title?: string;
  state: string;
  waiting_for?: string | null;
  cwd?: string;
  last_message?: string | null;
  error?: string | null;
  updated_at?: string;
  pending?: Pending | null;
}

export interface Status {
  connected: boolean;
  text: string;
  counts: Record<string, number>;
  busy: number;
  total: number;
  sessions: SessionView[];
  detail?: string | null;
}

/** A bgls command to run: what a quick-pick action or a prompt choice turns into. */
export interface Action {
  label: string;
  command: string;
  args: unknown[];
  /** Ask the user for text first; it replaces the "$TEXT" argument. */
  needsText?: string;
}

const ICONS: Record<string, string> = {
  needs_input: "$(bell-dot)",
  working: "$(sync~spin)",
  sleeping: "$(clock)",
  completed: "$(check)",
  failed: "$(error)",
  stopped: "$(debug-stop)",
};

/** The status-bar item's text: `$(bell-dot) 2 need input · 3 working`. */
export function statusBarText(status: Status | undefined): string {
  if (!status) {
    return "$(loading~spin) bgagents";
  }
  if (!status.connected) {
    return "$(debug-disconnect) bgd not running";
  }
  if ((status.counts.needs_input ?? 0) > 0) {
    return `${ICONS.needs_input} ${status.text}`;
  }
  if ((status.counts.working ?? 0) > 0) {
    return `${ICONS.working} ${status.text}`;
  }
  if ((status.counts.sleeping ?? 0) > 0) {
    return `${ICONS.sleeping} ${status.text}`;
  }
  return "$(hubot) idle";
}

/** Whether the item should draw attention (a warning background). */
export function needsAttention(status: Status | undefined): boolean {
  return !!status && status.connected && (status.counts.needs_input ?? 0) > 0;
}

export function statusTooltip(status: Status | undefined): string {
  if (!status) {
    return "bgagents: starting bgls";
  }
  if (!status.connected) {
    return `bgagents: the daemon is not reachable${status.detail ? ` (${status.detail})` : ""}. ` +
      "Run any bgagents command to start it.";
  }
  const lines = status.sessions.slice(0, 10).map((s) => `${s.id}  ${stateLabel(s)}  ${s.title ?? ""}`);
  const more = status.total > 10 ? [`… and ${status.total - 10} more`] : [];
  return ["bgagents — click for sessions", ...lines, ...more].join("\n");
}

export function stateLabel(session: SessionView): string {
  if (session.state === "needs_input") {
    return session.waiting_for === "question" ? "asks a question" : "needs permission";
  }
  return session.state;
}

export interface SessionItem {
  label: string;
  description: string;
  detail: string;
  sessionId: string;
}

/** One quick-pick row per session: needs input first, as bgls orders them. */
export function sessionItems(status: Status | undefined): SessionItem[] {
  if (!status || !status.connected) {
    return [];
  }
  return status.sessions.map((s) => ({
    label: `${ICONS[s.state] ?? ""} ${s.title || s.id}`.trim(),
    description: `${s.id} · ${stateLabel(s)}`,
    detail: s.pending?.text ?? s.error ?? s.last_message ?? "",
    sessionId: s.id,
  }));
}

/** What can be done with a session in its state. */
export function actionsFor(session: SessionView): Action[] {
  const id = session.id;
  const rid = session.pending?.request_id;
  const open: Action = { label: "$(output) Open transcript", command: "bgagents.openTranscript", args: [id] };
  const stop: Action = { label: "$(debug-stop) Stop", command: "bgagents.stop", args: [id] };
  if (session.state === "needs_input" && session.waiting_for === "question") {
    return [
      { label: "$(reply) Answer…", command: "bgagents.reply", args: [id, "$TEXT", rid], needsText: session.pending?.text ?? "Answer" },
      open, stop,
    ];
  }
  if (session.state === "needs_input") {
    return [
      { label: "$(check) Approve", command: "bgagents.approve", args: [{ id, request_id: rid }] },
      { label: "$(check-all) Approve always", command: "bgagents.approve", args: [{ id, request_id: rid, always: true }] },
      { label: "$(close) Deny", command: "bgagents.deny", args: [{ id, request_id: rid }] },
      open, stop,
    ];
  }
  if (session.state === "working" || session.state === "sleeping") {
    return [open, stop];
  }
  return [
    { label: "$(reply) Reply…", command: "bgagents.reply", args: [id, "$TEXT"], needsText: "Follow-up message" },
    open,
  ];
}

/** The arguments of an action with the user's text in place of "$TEXT". */
export function withText(action: Action, text: string): unknown[] {
  return action.args.map((a) => (a === "$TEXT" ? text : a)).filter((a) => a !== undefined);
}

/** Sessions a command like "approve" applies to, for picking one. */
export function sessionsIn(status: Status | undefined, state?: string): SessionView[] {
  if (!status || !status.connected) {
    return [];
  }
  return state ? status.sessions.filter((s) => s.state === state) : status.sessions;
}
