// bgagents for VS Code: starts bgls (the bgagents language server) and shows what it says.
//
// Thin on purpose: sessions, prompts, commands and tasks.toml / routines.toml support all live in bgls.
// This file draws the status-bar item from `bgagents/status`, offers palette commands
// that run bgls's `bgagents.*` commands, and asks for text when bgls wants a reply.

import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";
import {
  Action,
  Status,
  actionsFor,
  needsAttention,
  sessionItems,
  sessionsIn,
  statusBarText,
  statusTooltip,
  withText,
} from "./status";

let client: LanguageClient | undefined;
let status: Status | undefined;
let item: vscode.StatusBarItem | undefined;

function serverOptions(): ServerOptions {
  const config = vscode.workspace.getConfiguration("bgagents");
  const args = [...config.get<string[]>("server.args", [])];
  const socket = config.get<string>("socket", "");
  if (socket) {
    args.push("--socket", socket);
  }
  return { command: config.get<string>("server.command", "bgls"), args, transport: TransportKind.stdio };
}

async function run(command: string, args: unknown[]): Promise<unknown> {
  if (!client) {
    throw new Error("bgls is not running");
  }
  try {
    return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
  } catch (err) {
    // bgls answers with a clear message (e.g. "bgd: ... was already answered"); show it as is.
    const message = err instanceof Error ? err.message : String(err);
    void vscode.window.showErrorMessage(`bgagents: ${message}`);
    return undefined;
  }
}

async function runAction(action: Action): Promise<void> {
  let args = action.args;
  if (action.needsText) {
    const text = await vscode.window.showInputBox({ prompt: action.needsText });
    if (!text) {
      return;
    }
    args = withText(action, text);
  }
  await run(action.command, args);
}

function render(): void {
  if (!item) {
    return;
  }
  item.text = statusBarText(status);
  item.tooltip = statusTooltip(status);
  item.backgroundColor = needsAttention(status)
    ? new vscode.ThemeColor("statusBarItem.warningBackground")
    : undefined;
  item.show();
}

async function pickSession(state?: string): Promise<string | undefined> {
  const sessions = sessionsIn(status, state);
  if (sessions.length === 1) {
    return sessions[0].id;
  }
  const items = sessionItems({ ...(status as Status), sessions });
  if (items.length === 0) {
    void vscode.window.showInformationMessage(`bgagents: no session${state ? ` in ${state}` : ""}`);
    return undefined;
  }
  const picked = await vscode.window.showQuickPick(items, { placeHolder: "Session" });
  return picked?.sessionId;
}

async function showSessions(): Promise<void> {
  const items = sessionItems(status);
  if (items.length === 0) {
    void vscode.window.showInformationMessage(status?.connected === false
      ? "bgagents: the daemon is not running" : "bgagents: no sessions");
    return;
  }
  const picked = await vscode.window.showQuickPick(items, { placeHolder: "bgagents sessions", matchOnDetail: true });
  const session = status?.sessions.find((s) => s.id === picked?.sessionId);
  if (!session) {
    return;
  }
  const action = await vscode.window.showQuickPick(actionsFor(session), { placeHolder: `${session.id}: what now?` });
  if (action) {
    await runAction(action);
  }
}

function register(context: vscode.ExtensionContext, name: string, fn: () => Promise<unknown>): void {
  context.subscriptions.push(vscode.commands.registerCommand(name, fn));
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 100);
  item.command = "bgagents.ui.sessions";
  context.subscriptions.push(item);
  render();

  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file", pattern: "**/tasks.toml" }, { scheme: "file", pattern: "**/routines.toml" }],
    outputChannelName: "bgagents",
  };
  client = new LanguageClient("bgagents", "bgagents", serverOptions(), clientOptions);
  client.onNotification("bgagents/status", (params: Status) => {
    status = params;
    render();
  });
  client.onNotification("bgagents/replyRequested", async (params: { id: string; request_id: string; question: string }) => {
    const text = await vscode.window.showInputBox({ prompt: `${params.id}: ${params.question}` });
    if (text) {
      await run("bgagents.reply", [params.id, text, params.request_id]);
    }
  });

  register(context, "bgagents.ui.sessions", showSessions);
  register(context, "bgagents.ui.dispatch", async () => {
    const prompt = await vscode.window.showInputBox({ prompt: "Prompt for a background session" });
    if (prompt) {
      const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
      const session = (await run("bgagents.dispatch", [{ prompt, ...(folder ? { cwd: folder } : {}) }])) as
        { id: string } | undefined;
      if (session) {
        void vscode.window.showInformationMessage(`bgagents: backgrounded · ${session.id}`);
      }
    }
  });
  register(context, "bgagents.ui.approve", async () => {
    const id = await pickSession("needs_input");
    const session = status?.sessions.find((s) => s.id === id);
    if (id) {
      await run("bgagents.approve", [{ id, request_id: session?.pending?.request_id }]);
    }
  });
  register(context, "bgagents.ui.deny", async () => {
    const id = await pickSession("needs_input");
    const session = status?.sessions.find((s) => s.id === id);
    if (id) {
      const message = await vscode.window.showInputBox({ prompt: "Why (passed to the agent; optional)" });
      await run("bgagents.deny", [{ id, request_id: session?.pending?.request_id, ...(message ? { message } : {}) }]);
    }
  });
  register(context, "bgagents.ui.reply", async () => {
    const id = await pickSession();
    const text = id && (await vscode.window.showInputBox({ prompt: `Reply to ${id}` }));
    if (id && text) {
      await run("bgagents.reply", [id, text]);
    }
  });
  register(context, "bgagents.ui.stop", async () => {
    const id = await pickSession("working");
    if (id) {
      await run("bgagents.stop", [id]);
    }
  });
  register(context, "bgagents.ui.openTranscript", async () => {
    const id = await pickSession();
    if (id) {
      await run("bgagents.openTranscript", [id]);
    }
  });
  register(context, "bgagents.ui.loop", async () => {
    const text = await vscode.window.showInputBox({ prompt: "[INTERVAL] [PROMPT], e.g. 10m check the build" });
    if (text !== undefined) {
      await run("bgagents.loop", [text]);
    }
  });
  register(context, "bgagents.ui.restart", async () => {
    await client?.restart();
  });

  context.subscriptions.push(client);
  await client.start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
  client = undefined;
}
