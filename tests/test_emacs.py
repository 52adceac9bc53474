"""The Emacs plugin in batch Emacs: it starts bgls through eglot, its mode-line segment shows a
session that needs input, and `bgagents-approve` unblocks it.

The Lisp side waits on conditions (the status notifications bgls sends), never for fixed
times, and writes what it saw to a JSON file that the test then checks, also against the
daemon.  Emacs runs with -Q, so Debian's elpa-eglot (Emacs 28) is activated from the system
package directories; Emacs 29 and later have eglot built in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import config_text

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "editors" / "emacs"
EMACS = shutil.which("emacs")

pytestmark = pytest.mark.skipif(
    EMACS is None, reason="emacs is not installed (apt-get install emacs-nox elpa-eglot)")

WAIT_S = 90  # per condition; the machine may be loaded, nothing here asserts on time

# Shared by the scripts: results to a JSON file, eglot found (or a skip), waiting on conditions.
PRELUDE = r""";;; -*- lexical-binding: t; -*-
(require 'json)
(defvar bgt-results nil)

(defun bgt-put (key value)
  (push (cons key value) bgt-results))

(defun bgt-finish (&optional err skip)
  (when err (bgt-put 'error err))
  (when skip (bgt-put 'skip skip))
  (with-temp-file @OUT@ (insert (json-encode bgt-results)))
  (kill-emacs (if err 1 0)))

;; -Q leaves out site-lisp, where Debian puts elpa-* packages: activate those from the
;; system package directories (next to this Emacs's own data directory).
(unless (locate-library "eglot")
  (require 'package)
  (let ((dirs nil))
    (dolist (base (list (expand-file-name "../site-lisp/elpa" data-directory)
                        (expand-file-name "../../site-lisp/elpa" data-directory)))
      (when (file-directory-p base) (push base dirs)))
    (setq package-directory-list (nreverse dirs)
          package-user-dir (expand-file-name "elpa" user-emacs-directory))
    (package-initialize)))
(cond ((version< emacs-version "28.1")
       (bgt-finish nil (format "Emacs %s is older than 28.1" emacs-version)))
      ((not (locate-library "eglot"))
       (bgt-finish nil (format "Emacs %s has no eglot (apt-get install elpa-eglot)" emacs-version))))

(add-to-list 'load-path @PLUGIN@)
(require 'bgagents)
(setq eglot-connect-timeout @WAIT@
      jsonrpc-default-request-timeout @WAIT@)

(defun bgt-wait (what pred)
  "Wait until PRED holds, reading process output meanwhile; fail after the deadline."
  (let ((deadline (+ (float-time) @WAIT@)))
    (while (not (funcall pred))
      (when (> (float-time) deadline)
        (error "timed out waiting for %s; mode line: %S" what (bgagents-mode-line)))
      (accept-process-output nil 0.1))))
"""

APPROVE = r"""
(defun bgt-mode-line-text (construct)
  "The text CONSTRUCT puts in a mode line: strings, variables, :eval and lists of them.
\(`format-mode-line' gives nothing in batch Emacs.)"
  (cond ((stringp construct) construct)
        ((and construct (symbolp construct) (boundp construct))
         (bgt-mode-line-text (symbol-value construct)))
        ((and (consp construct) (eq (car construct) :eval))
         (bgt-mode-line-text (eval (cadr construct) t)))
        ((consp construct) (mapconcat #'bgt-mode-line-text construct ""))
        (t "")))

(defvar bgt-prompt nil "The last window/showMessageRequest from bgls.")

(condition-case err
    (progn
      (setq bgagents-bgls-command @CMD@)
      ;; A person who leaves eglot's prompt unanswered (dismissed) and approves with the
      ;; command instead; the prompt is kept to be checked.
      (cl-defmethod eglot-handle-request :around
        (_server (_method (eql window/showMessageRequest)) &key message actions &allow-other-keys)
        (setq bgt-prompt (list (cons 'message message)
                               (cons 'actions (mapcar (lambda (a) (plist-get a :title))
                                                      (append actions nil)))))
        nil)  ; null: dismissed
      (bgagents-setup)
      ;; Return from the start before bgls has answered, as on a slow machine: the
      ;; first command waits for it and starts no second one.
      (setq eglot-sync-connect nil)
      (bgagents-start)
      (bgt-put 'connecting (and (bgagents--server) (eq bgagents--connecting (bgagents--server)) t))
      (bgagents-list)
      (bgt-put 'listed (with-current-buffer "*bgagents*" (buffer-string)))
      (bgt-put 'bgls_processes
               (cl-count-if (lambda (p) (member "bgls" (process-command p))) (process-list)))
      (bgt-wait "bgls to connect" (lambda () (eq (plist-get bgagents--status :connected) t)))
      (bgt-put 'idle (bgagents-mode-line))

      (bgagents-dispatch "tool Bash {\"command\":\"ls\"}")
      (bgt-wait "a session needing input"
                (lambda () (string-match-p "1 needs input" (bgagents-mode-line))))
      (bgt-put 'waiting (bgagents-mode-line))
      (bgt-put 'mode_line (bgt-mode-line-text global-mode-string))
      (bgt-wait "the prompt" (lambda () bgt-prompt))
      (bgt-put 'prompt bgt-prompt)
      (let ((session (car (bgagents--sessions "needs_input"))))
        (bgt-put 'session (plist-get session :id))
        (bgt-put 'request_id (bgagents--request-id session))
        (call-interactively #'bgagents-approve)
        (bgt-wait "the session to complete"
                  (lambda () (cl-some (lambda (s) (equal (plist-get s :id) (plist-get session :id)))
                                      (bgagents--sessions "completed")))))
      (bgt-put 'after (bgagents-mode-line))
      (eglot-shutdown (bgagents--server))
      (bgt-put 'shut_down (bgagents-mode-line))
      (bgt-finish))
  (error (bgt-finish (error-message-string err))))
"""

PROMPT = r"""
(condition-case err
    (progn
      (setq bgagents-bgls-command @CMD@)
      (bgagents-setup)
      (bgagents-start)
      (bgt-wait "bgls to connect" (lambda () (eq (plist-get bgagents--status :connected) t)))
      (bgagents-dispatch "tool Bash {\"command\":\"ls\"}")
      ;; eglot asks in the minibuffer, which batch Emacs reads from stdin.
      (bgt-wait "the session to complete" (lambda () (bgagents--sessions "completed")))
      (bgt-put 'session (plist-get (car (bgagents--sessions "completed")) :id))
      (eglot-shutdown (bgagents--server))
      (bgt-finish))
  (error (bgt-finish (error-message-string err))))
"""

# A peer that writes a notification in the same write as each answer, as bgls may.
PEER = r"""
import json, os, sys
def frame(msg):
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body
while True:
    length = None
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            sys.exit(0)
        if not line.strip():
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    msg = json.loads(sys.stdin.buffer.read(length))
    if "id" in msg:
        answer = frame({"jsonrpc": "2.0", "id": msg["id"], "result": {"answered": msg["method"]}})
        note = frame({"jsonrpc": "2.0", "method": "bgagents/status", "params": {"text": "with the answer"}})
        os.write(1, answer + note)
"""

REQUEST = r"""
(condition-case err
    (let* ((seen nil)
           (conn (make-instance
                  'jsonrpc-process-connection :name "peer"
                  :process (make-process :name "peer" :command @CMD@ :connection-type 'pipe
                                         :coding 'utf-8-emacs-unix :noquery t)
                  :notification-dispatcher (lambda (_conn method params) (push (list method params) seen))
                  :request-dispatcher #'ignore)))
      (bgt-put 'result (bgagents--request conn :ping nil))
      (bgt-put 'seen_on_return (length seen))
      (jsonrpc-shutdown conn)
      (bgt-finish))
  (error (bgt-finish (error-message-string err))))
"""


def el(value) -> str:
    """An Emacs Lisp literal for a string or a list of strings."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # the same escapes as a Lisp string here
    return "(list " + " ".join(el(v) for v in value) + ")"


def run_emacs(tmp_path: Path, body: str, cmd: list[str], env: dict, cwd: Path, stdin: str = "") -> dict:
    """Run PRELUDE + body in batch Emacs; return what it wrote (skipping where it has no eglot)."""
    out = tmp_path / "out.json"
    script = tmp_path / "test-bgagents.el"
    text = PRELUDE + body
    for key, value in (("@OUT@", el(str(out))), ("@PLUGIN@", el(str(PLUGIN))), ("@WAIT@", str(WAIT_S)),
                       ("@CMD@", el(cmd))):
        text = text.replace(key, value)
    script.write_text(text)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(env, HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
               XDG_STATE_HOME=str(tmp_path / "xdg-state"), XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
               XDG_DATA_HOME=str(tmp_path / "xdg-data"))
    proc = subprocess.run([EMACS, "--batch", "-Q", "-l", str(script)], cwd=str(cwd), env=env,
                          input=stdin, capture_output=True, text=True, timeout=6 * WAIT_S)
    assert out.exists(), f"emacs wrote nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    results = json.loads(out.read_text())
    if results.get("skip"):
        pytest.skip(results["skip"])
    assert results.get("error") is None, f"{results['error']}\n{proc.stderr[-3000:]}"
    return results


def test_emacs_mode_line_and_approve(bgd, tmp_path):
    # Agents stay up after their turn for the whole test, so bgls has nothing to write
    # after a session's last change: a status that Emacs held back would never show.
    config = config_text()
    assert "idle_timeout_s = 30\n" in config
    (bgd.config_dir / "config.toml").write_text(config.replace("idle_timeout_s = 30\n", "idle_timeout_s = 3600\n"))
    bgd.start()
    # A user without a bgagents config dir yet: the plugin makes it to visit tasks.toml there.
    env = {k: v for k, v in bgd.env.items() if k != "BGD_CONFIG_DIR"}
    results = run_emacs(tmp_path, APPROVE, [sys.executable, "-m", "bgls", "--socket", str(bgd.socket)],
                        env, bgd.work)

    assert results["connecting"] is True
    assert results["listed"] == ""  # no sessions yet
    assert results["bgls_processes"] == 1
    assert (tmp_path / "xdg-config" / "bgagents").is_dir()
    assert results["idle"] == "bg: idle"
    assert results["waiting"] == "bg: 1 needs input"
    assert "bg: 1 needs input" in results["mode_line"]  # as global-mode-string shows it
    assert "wants to use Bash: ls" in results["prompt"]["message"]
    assert results["prompt"]["actions"] == ["Approve", "Deny", "Open"]
    assert results["request_id"]
    assert results["after"] == "bg: idle"
    assert results["shut_down"] == ""  # no stale status once bgls is gone

    session = bgd.rpc("session.get", {"id": results["session"]})
    assert session["state"] == "completed" and session["cwd"] == str(bgd.work)
    transcript = json.dumps(bgd.rpc("session.transcript", {"id": session["id"]})["entries"])
    assert "allowed Bash" in transcript


def test_emacs_approve_in_eglots_prompt(running_bgd, tmp_path):
    """The prompt eglot shows for bgls's window/showMessageRequest approves the session."""
    bgd = running_bgd
    results = run_emacs(tmp_path, PROMPT, [sys.executable, "-m", "bgls", "--socket", str(bgd.socket)],
                        bgd.env, bgd.work, stdin="Approve\n")
    session = bgd.rpc("session.get", {"id": results["session"]})
    assert session["state"] == "completed"
    transcript = json.dumps(bgd.rpc("session.transcript", {"id": session["id"]})["entries"])
    assert "allowed Bash" in transcript


def test_emacs_request_handles_what_came_with_the_answer(tmp_path):
    """A notification in the same read as a command's answer is handled by the time the
    command returns (jsonrpc-request in Emacs 28 left it unread until the server wrote again)."""
    results = run_emacs(tmp_path, REQUEST, [sys.executable, "-c", PEER], dict(os.environ), tmp_path)
    assert results["result"] == {"answered": "ping"}
    assert results["seen_on_return"] == 1
