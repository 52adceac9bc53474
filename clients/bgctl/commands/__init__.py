"""bgctl's commands, one module per group; each has `register(sub, add_common)`.

`COMMANDS` names the module that registers each command word, so that a command line imports its
own module and no other (tests/test_bgctl_arguments.py checks the table against the modules).
A new command is a module here plus its words in the table.
"""

from __future__ import annotations

# In the order `bgctl --help` lists them.
MODULES = ("daemon", "doctor", "sessions", "raw", "loops", "tasks", "routines", "schedule", "agents", "web", "cluster")

COMMANDS = {
    "daemon": "daemon",
    "doctor": "doctor",
    **dict.fromkeys(("dispatch", "ls", "show", "logs", "reply", "approve", "deny", "stop", "rm", "pin", "unpin",
                     "rename", "resume"), "sessions"),
    "events": "raw",
    "rpc": "raw",
    "loop": "loops",
    "remind": "loops",
    "task": "tasks",
    "routine": "routines",
    "schedule": "schedule",
    "agents": "agents",
    "web": "web",
    "cluster": "cluster",
}


def module_for(word: str):
    return _load(COMMANDS[word])


def modules() -> list:
    return [_load(name) for name in MODULES]


def _load(name: str):
    return __import__(f"{__name__}.{name}", fromlist=["register"])
