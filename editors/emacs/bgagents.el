;;; bgagents.el --- Background coding agents in Emacs, through eglot and bgls  -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1") (eglot "1.9"))
;; Keywords: tools, processes
;; SPDX-License-Identifier: MIT

;;; Commentary:

;; A thin client of bgls, the bgagents language server.  It registers bgls with
;; eglot for tasks.toml and routines.toml (diagnostics, hover with the next fire times, completion
;; of schedules), keeps the last `bgagents/status' notification for a mode-line
;; segment ("bg: 2 need input · 3 working"), answers bgls's prompts through
;; eglot (Approve / Deny / Open), and offers commands that run bgls's
;; `bgagents.*' commands.
;;
;;   (add-to-list 'load-path "/path/to/bgagents/editors/emacs")
;;   (require 'bgagents)
;;   (bgagents-setup)          ; eglot for tasks.toml, the mode-line segment
;;   (bgagents-start)          ; optional: follow the daemon right away
;;
;; All the logic stays in bgls; this file translates.

;;; Code:

(require 'cl-lib)
(require 'eglot)
(require 'jsonrpc)
(require 'subr-x)

(defgroup bgagents nil
  "Background coding agents (bgagents) through bgls."
  :group 'tools
  :prefix "bgagents-")

(defcustom bgagents-bgls-command '("bgls")
  "How to start bgls, the bgagents language server (a list: program and arguments)."
  :type '(repeat string))

(defcustom bgagents-mode-line-prefix "bg: "
  "Text before the status summary in the mode line."
  :type 'string)

(defcustom bgagents-hide-idle nil
  "When non-nil, the mode-line segment is empty while no session runs."
  :type 'boolean)

(defcustom bgagents-connect-timeout 30
  "Seconds a command waits for bgls to answer when it is still starting."
  :type 'number)

(defvar bgagents--status nil
  "The params of the last `bgagents/status' notification (a plist).")

(defvar bgagents--server nil
  "The eglot server of bgls: the one `bgagents-start' started (perhaps still
connecting), or the one that sent the last status.")

(defun bgagents--env-dir (name)
  "The directory in environment variable NAME, or nil when unset or blank."
  (let ((value (getenv name)))
    (and value (not (string-blank-p value)) value)))

(defun bgagents--tasks-file ()
  "The user's tasks.toml (SPEC §7): $BGD_CONFIG_DIR or the platform config dir."
  (let ((dir (or (bgagents--env-dir "BGD_CONFIG_DIR")
                 (expand-file-name "bgagents" (or (bgagents--env-dir "XDG_CONFIG_HOME") "~/.config")))))
    (expand-file-name "tasks.toml" dir)))

;;;; tasks.toml as a language

(define-derived-mode bgagents-tasks-mode conf-toml-mode "bgagents-tasks"
  "Major mode for bgagents' tasks.toml, checked and completed by bgls (eglot).")

(defun bgagents--server-program (&rest _)
  "The bgls command for eglot."
  bgagents-bgls-command)

;;;; the status, the prompts

(defun bgagents-mode-line ()
  "The mode-line segment: \"bg: 2 need input · 3 working\"."
  (let ((status bgagents--status))
    (cond ((or (null status) (null (bgagents--server))) "")
          ((and bgagents-hide-idle (eq (plist-get status :connected) t)
                (equal (plist-get status :text) "idle"))
           "")
          (t (concat bgagents-mode-line-prefix (or (plist-get status :text) ""))))))

(defvar bgagents--mode-line-construct '(:eval (bgagents-mode-line))
  "What `bgagents-setup' adds to `global-mode-string'.")
(put 'bgagents--mode-line-construct 'risky-local-variable t)

(cl-defmethod eglot-handle-notification
  (server (_method (eql bgagents/status)) &rest params)
  "Keep the status bgls sends for `bgagents-mode-line'."
  (setq bgagents--status params
        bgagents--server server)
  (force-mode-line-update t))

(cl-defmethod eglot-handle-notification
  (server (_method (eql bgagents/replyRequested)) &key id request_id question &allow-other-keys)
  "bgls asks for the text of a reply: read it and send it for exactly that request.
It is read from a timer, not inside the process filter that got the message."
  (run-at-time 0 nil
               (lambda ()
                 (condition-case err
                     (let ((text (read-string (format "bgagents %s: %s " id (or question "Reply")))))
                       (unless (string-empty-p text)
                         (bgagents--execute "bgagents.reply" (vector id text request_id) server)))
                   (error (message "%s" (error-message-string err)))))))

;;;; talking to bgls

(defvar bgagents--connecting nil
  "The bgls server `bgagents-start' started that has not yet answered eglot.")

(defun bgagents--server ()
  "The running bgls eglot server (perhaps still connecting), or nil."
  (and bgagents--server (jsonrpc-running-p bgagents--server) bgagents--server))

(defun bgagents--note-server (server)
  "Remember SERVER, which eglot is making for `bgagents-start'."
  (setq bgagents--server server
        bgagents--connecting server))

(defun bgagents--note-connected (server)
  "SERVER answered eglot's handshake."
  (when (eq server bgagents--connecting)
    (setq bgagents--connecting nil)))

(defun bgagents-start ()
  "Start bgls (through eglot, on the user's tasks.toml) and follow the daemon.
Return its eglot server, which may still be connecting; never start a
second one while one runs."
  (interactive)
  (or (bgagents--server)
      (let ((file (bgagents--tasks-file)))
        (make-directory (file-name-directory file) t) ; eglot runs bgls there
        (with-current-buffer (find-file-noselect file)
          (unless (derived-mode-p 'bgagents-tasks-mode)
            (bgagents-tasks-mode))
          (let ((live (eglot-current-server)))
            (if (and live (jsonrpc-running-p live))
                (setq bgagents--server live)
              ;; What M-x eglot does, without the questions.  eglot returns the
              ;; server only once it has answered (within `eglot-sync-connect'):
              ;; take it when it is made, so that a slow start is waited for by
              ;; the commands, not repeated.
              (add-hook 'eglot-connect-hook #'bgagents--note-connected)
              (add-hook 'eglot-server-initialized-hook #'bgagents--note-server)
              (unwind-protect (apply #'eglot (eglot--guess-contact))
                (remove-hook 'eglot-server-initialized-hook #'bgagents--note-server))
              (bgagents--server)))))))

(defun bgagents--connected (server)
  "SERVER once it has answered eglot, waiting up to `bgagents-connect-timeout'."
  (let ((deadline (+ (float-time) bgagents-connect-timeout)))
    (while (and (eq server bgagents--connecting) (jsonrpc-running-p server)
                (< (float-time) deadline))
      (accept-process-output nil 0.1))
    (cond ((not (jsonrpc-running-p server))
           (user-error "bgagents: bgls exited; see the buffer %s"
                       (buffer-name (jsonrpc-stderr-buffer server))))
          ((eq server bgagents--connecting)
           (user-error "bgagents: bgls did not answer within %s s (bgagents-connect-timeout)"
                       bgagents-connect-timeout))
          (t server))))

(defun bgagents--request (server method params)
  "Send METHOD with PARAMS to SERVER and wait for the answer; return its result.
Unlike `jsonrpc-request', this waits without throwing out of the process
filter, which (in jsonrpc 1.0.14, Emacs 28) held back the notifications that
came with the answer until bgls next wrote."
  (let ((answer nil)
        (timeout jsonrpc-default-request-timeout))
    (jsonrpc-async-request server method params
                           :success-fn (lambda (result) (setq answer (list 'result result)))
                           :error-fn (lambda (failure) (setq answer (list 'error failure)))
                           :timeout-fn (lambda () (setq answer (list 'timeout)))
                           :timeout timeout)
    (while (and (null answer) (jsonrpc-running-p server))
      (accept-process-output nil 0.1))
    (pcase answer
      (`(result ,result) result)
      (`(error ,failure) (user-error "bgagents: %s" (or (plist-get failure :message) failure)))
      (`(timeout) (user-error "bgagents: bgls did not answer %s within %s s" method timeout))
      (_ (user-error "bgagents: bgls exited; see the buffer %s"
                     (buffer-name (jsonrpc-stderr-buffer server)))))))

(defun bgagents--execute (command arguments &optional server)
  "Run bgls's COMMAND with ARGUMENTS (a vector); return the result."
  (let ((server (or server
                    (bgagents--connected (or (bgagents-start) (user-error "bgagents: bgls did not start"))))))
    (bgagents--request server :workspace/executeCommand
                       (list :command command :arguments arguments))))

(defun bgagents--sessions (&optional state)
  "Sessions from the last status (plists), only those in STATE when given."
  (cl-remove-if-not (lambda (s) (or (null state) (equal (plist-get s :state) state)))
                    (append (plist-get bgagents--status :sessions) nil)))

(defun bgagents--read-session (prompt &optional state)
  "Read a session id with PROMPT, offering the sessions in STATE first."
  (let* ((sessions (or (bgagents--sessions state) (bgagents--sessions)))
         (choices (mapcar (lambda (s)
                            (cons (format "%s  %s  %s" (plist-get s :id) (plist-get s :state)
                                          (or (plist-get s :title) ""))
                                  s))
                          sessions)))
    (if (= (length sessions) 1)
        (car sessions)
      (let ((picked (completing-read prompt choices nil nil)))
        (or (cdr (assoc picked choices))
            (list :id picked))))))

(defun bgagents--request-id (session)
  "The request SESSION waits on, if any."
  (let ((pending (plist-get session :pending)))
    (and (listp pending) (plist-get pending :request_id))))

;;;; commands

(defun bgagents-dispatch (prompt)
  "Start a background session with PROMPT in `default-directory'."
  (interactive "sPrompt: ")
  (let ((session (bgagents--execute "bgagents.dispatch"
                                    (vector (list :prompt prompt
                                                  :cwd (expand-file-name default-directory))))))
    (message "bgagents: backgrounded · %s" (plist-get session :id))))

(defun bgagents-list ()
  "Show the sessions."
  (interactive)
  (let ((sessions (bgagents--execute "bgagents.list" [])))
    (with-current-buffer (get-buffer-create "*bgagents*")
      (let ((inhibit-read-only t))
        (erase-buffer)
        (cl-loop for s across sessions
                 do (insert (format "%s  %-11s %s\n" (plist-get s :id) (plist-get s :state)
                                    (let ((name (plist-get s :name)))
                                      (if (stringp name) name (or (plist-get s :prompt) ""))))))
        (special-mode))
      (display-buffer (current-buffer)))))

(defun bgagents-approve (session)
  "Allow the pending request of SESSION."
  (interactive (list (bgagents--read-session "Approve: " "needs_input")))
  (bgagents--execute "bgagents.approve"
                     (vector (list :id (plist-get session :id)
                                   :request_id (bgagents--request-id session))))
  (message "bgagents: approved %s" (plist-get session :id)))

(defun bgagents-deny (session message)
  "Deny the pending request of SESSION, telling the agent MESSAGE."
  (interactive (list (bgagents--read-session "Deny: " "needs_input")
                     (read-string "Why (optional): ")))
  (bgagents--execute "bgagents.deny"
                     (vector (append (list :id (plist-get session :id)
                                           :request_id (bgagents--request-id session))
                                     (unless (string-empty-p message) (list :message message)))))
  (message "bgagents: denied %s" (plist-get session :id)))

(defun bgagents-reply (session text)
  "Send TEXT to SESSION: a follow-up, or the answer to its question."
  (interactive (let ((s (bgagents--read-session "Reply to: ")))
                 (list s (read-string (format "Reply to %s: " (plist-get s :id))))))
  (bgagents--execute "bgagents.reply" (vector (plist-get session :id) text)))

(defun bgagents-stop (session)
  "Stop SESSION."
  (interactive (list (bgagents--read-session "Stop: " "working")))
  (bgagents--execute "bgagents.stop" (vector (plist-get session :id))))

(defun bgagents-log (session)
  "Open the transcript of SESSION."
  (interactive (list (bgagents--read-session "Transcript of: ")))
  (let ((result (bgagents--execute "bgagents.openTranscript" (vector (plist-get session :id)))))
    ;; eglot before 1.15 does not show documents on the server's request: open it here.
    (when (and result (not (eq (plist-get result :shown) t)))
      (find-file-other-window (plist-get result :path)))))

(defun bgagents-loop (spec)
  "Start a loop in `default-directory': SPEC is \"[INTERVAL] [PROMPT]\"."
  (interactive "sLoop ([INTERVAL] [PROMPT]): ")
  (message "bgagents: %S" (bgagents--execute "bgagents.loop" (vector spec))))

;;;###autoload
(defun bgagents-setup ()
  "Use bgls for tasks.toml and routines.toml through eglot and show the status in the mode line."
  (add-to-list 'auto-mode-alist '("/tasks\\.toml\\'" . bgagents-tasks-mode))
  (add-to-list 'auto-mode-alist '("/routines\\.toml\\'" . bgagents-tasks-mode))
  (add-to-list 'eglot-server-programs `(bgagents-tasks-mode . bgagents--server-program))
  (add-hook 'bgagents-tasks-mode-hook #'eglot-ensure)
  (unless (member 'bgagents--mode-line-construct global-mode-string)
    (setq global-mode-string (append (or global-mode-string '("")) '(bgagents--mode-line-construct)))))

(provide 'bgagents)
;;; bgagents.el ends here
