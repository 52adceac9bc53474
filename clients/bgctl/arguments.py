"""Command-line arguments declared once, read on the fast path without argparse.

A command module declares its arguments with argparse's own calls (`add_subparsers`, `add_parser`,
`add_argument`, `set_defaults`) made on a `Spec`, which records them and builds nothing.
`quick_parse` reads the plain command lines people type (exact option names, option values that do
not start with "-", positionals in one run) into the namespace argparse would make of them.  Anything
else (`--help`, an abbreviated option, `--`, a mistake) gives None, and the caller replays the spec into
argparse (`bgctl.full_parser`), so help, every error message and exit code 2 are argparse's own.
Importing argparse and building its parsers costs a cold `bgctl` several milliseconds; most command
lines never need it.  tests/test_bgctl_arguments.py holds the two readings to the same answers.
"""

from __future__ import annotations

from types import SimpleNamespace

# argparse's values (a test checks that they agree).  argparse compares SUPPRESS by identity,
# so `bgctl.full_parser` swaps in its own object when it replays a spec.
SUPPRESS = "==SUPPRESS=="
REMAINDER = "..."


class Spec:
    """One parser, recorded: its constructor's keywords and every call made on it, in order."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[str, tuple, dict]] = []

    def add_argument(self, *names: str, **kwargs) -> None:
        self.calls.append(("add_argument", names, kwargs))

    def set_defaults(self, **kwargs) -> None:
        self.calls.append(("set_defaults", (), kwargs))

    def add_subparsers(self, **kwargs) -> "SubSpecs":
        group = SubSpecs()
        self.calls.append(("add_subparsers", (group,), kwargs))
        return group


class SubSpecs:
    """A recorded `add_subparsers()` group: its parsers by name, in the order they were added."""

    def __init__(self):
        self.parsers: dict[str, Spec] = {}

    def add_parser(self, name: str, **kwargs) -> Spec:
        spec = Spec(**kwargs)
        self.parsers[name] = spec
        return spec


class _NotQuick(Exception):
    """This command line needs argparse itself."""


def quick_parse(spec: Spec, argv: list[str]) -> SimpleNamespace | None:
    """The namespace argparse would give for `argv`, or None when only argparse can tell."""
    try:
        return SimpleNamespace(**_parse(spec, argv, ()))
    except _NotQuick:
        return None


# -- what argparse would make of the recorded calls ---------------------------------------------

_ARGUMENT_KEYS = {"action", "dest", "default", "type", "choices", "nargs", "help", "metavar"}
_GROUP_KEYS = {"dest", "metavar", "help", "title", "description"}
_VARIADIC = ("?", "+", REMAINDER)


class _Action:
    __slots__ = ("dest", "flag", "default", "type", "choices", "nargs")

    def __init__(self, dest, flag, default, type, choices, nargs):
        self.dest, self.flag, self.default, self.type, self.choices, self.nargs = (
            dest, flag, default, type, choices, nargs)


class _Parser:
    """A spec read as argparse reads it; `_NotQuick` for anything this reader does not cover."""

    def __init__(self, spec: Spec):
        self.options: dict[str, _Action] = {"-h": None, "--help": None} if spec.kwargs.get("add_help", True) else {}
        self.actions: list[_Action] = []
        self.positionals: list[_Action] = []
        self.defaults: dict = {}
        self.group: SubSpecs | None = None
        self.group_dest = SUPPRESS
        if set(spec.kwargs) - {"prog", "description", "add_help", "help"}:
            raise _NotQuick
        for what, args, kwargs in spec.calls:
            if what == "add_argument":
                self._argument(args, kwargs)
            elif what == "set_defaults":
                self.defaults.update(kwargs)
                for action in self.actions:
                    if action.dest in kwargs:
                        action.default = kwargs[action.dest]
            else:
                if self.group is not None or self.positionals or set(kwargs) - _GROUP_KEYS:
                    raise _NotQuick
                self.group, = args
                self.group_dest = kwargs.get("dest", SUPPRESS)
                # argparse's subparsers action: a positional whose default is None
                self.actions.append(_Action(self.group_dest, None, None, None, None, None))
        if self.group is not None and self.positionals:
            raise _NotQuick
        # Every positional takes one word, except that the last may take several.
        if any(p.nargs is not None for p in self.positionals[:-1]):
            raise _NotQuick

    def _argument(self, names: tuple, kwargs: dict) -> None:
        if set(kwargs) - _ARGUMENT_KEYS or not names:
            raise _NotQuick
        flag = kwargs.get("action", "store")
        nargs = kwargs.get("nargs")
        if flag not in ("store", "store_true", "store_false") or (flag != "store" and nargs is not None):
            raise _NotQuick
        if names[0].startswith("-"):
            if nargs is not None or not all(n.startswith("-") and n != "--" for n in names):
                raise _NotQuick
            longs = [n for n in names if n.startswith("--")]
            dest = kwargs.get("dest") or (longs or names)[0].lstrip("-").replace("-", "_")
        else:
            if len(names) != 1 or "dest" in kwargs or flag != "store" or nargs not in (None, *_VARIADIC):
                raise _NotQuick
            dest = names[0]
        if "default" in kwargs:
            default = kwargs["default"]
        elif dest in self.defaults:
            default = self.defaults[dest]
        else:
            default = {"store_true": False, "store_false": True}.get(flag)
        if isinstance(default, str) and default != SUPPRESS and "type" in kwargs:
            raise _NotQuick  # argparse would convert it
        action = _Action(dest, flag, default, kwargs.get("type"), kwargs.get("choices"), nargs)
        self.actions.append(action)
        if names[0].startswith("-"):
            for name in names:
                self.options[name] = action
        else:
            self.positionals.append(action)

    def value(self, action: _Action, word: str):
        if action.type is not None:
            try:
                word = action.type(word)
            except (TypeError, ValueError):
                raise _NotQuick from None
        if action.choices is not None and word not in action.choices:
            raise _NotQuick
        return word


def _ambiguous(word: str, options) -> bool:
    """Would argparse's prefix matching find several options for `word` (an error even in REMAINDER)?"""
    if word in options or len(word) < 2:
        return False
    if word.startswith("--"):
        prefix = word.split("=", 1)[0]
        if prefix in options:
            return False
        return sum(1 for o in options if o.startswith(prefix)) > 1
    if "=" in word and word.split("=", 1)[0] in options:
        return False
    return sum(1 for o in options if o == word[:2] or o.startswith(word)) > 1


def _option(parser: _Parser, word: str, outer: tuple) -> tuple[_Action, str | None]:
    """The action an option word names exactly (with its `=value`), or _NotQuick."""
    if word == "--" or any(_ambiguous(word, options) for options in outer):
        raise _NotQuick
    action, inline = parser.options.get(word), None
    if action is None and word.startswith("--") and "=" in word:
        name, inline = word.split("=", 1)
        action = parser.options.get(name)
        if action is None or action.flag != "store" or not inline:
            raise _NotQuick
    if action is None:  # unknown, abbreviated, -h/--help, a cluster of short flags, a negative number
        raise _NotQuick
    return action, inline


def _parse(spec: Spec, argv: list[str], outer: tuple) -> dict:
    parser = _Parser(spec)
    values: dict = {}
    for action in parser.actions:
        if action.dest != SUPPRESS and action.dest not in values and action.default != SUPPRESS:
            values[action.dest] = action.default
    for dest, default in parser.defaults.items():
        values.setdefault(dest, default)
    outer = (*outer, parser.options)
    positionals = parser.positionals
    last = positionals[-1] if positionals and positionals[-1].nargs in _VARIADIC else None
    fixed = positionals[:-1] if last is not None else positionals
    filled, run, run_over = 0, [], False
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("-"):
            action, inline = _option(parser, word, outer)
            if filled or run:
                run_over = True
            if action.flag == "store_true":
                values[action.dest] = True
            elif action.flag == "store_false":
                values[action.dest] = False
            else:
                if inline is None:
                    i += 1
                    if i == len(argv) or argv[i].startswith("-"):
                        raise _NotQuick
                    inline = argv[i]
                values[action.dest] = parser.value(action, inline)
            i += 1
            continue
        if parser.group is not None:
            child = parser.group.parsers.get(word)
            if child is None:
                raise _NotQuick
            if parser.group_dest != SUPPRESS:
                values[parser.group_dest] = word
            values.update(_parse(child, argv[i + 1:], outer))
            return values
        if run_over:
            raise _NotQuick  # positionals on both sides of an option: argparse's rules get subtle
        if filled < len(fixed):
            values[fixed[filled].dest] = parser.value(fixed[filled], word)
            filled += 1
            if filled == len(fixed) and last is not None and last.nargs == REMAINDER:
                rest = argv[i + 1:]  # after the fixed positionals REMAINDER takes every word, options too
                for later in rest:
                    if later.startswith("-"):
                        _option(parser, later, outer)
                values[last.dest] = rest
                return values
        elif last is None:
            raise _NotQuick
        elif last.nargs == REMAINDER:
            for later in argv[i + 1:]:
                if later.startswith("-"):
                    _option(parser, later, outer)
            values[last.dest] = argv[i:]
            return values
        else:
            run.append(parser.value(last, word))
        i += 1
    if filled < len(fixed):
        raise _NotQuick
    if last is not None:
        if last.nargs == REMAINDER:
            values[last.dest] = []
        elif last.nargs == "+":
            if not run:
                raise _NotQuick
            values[last.dest] = run
        elif len(run) > 1:
            raise _NotQuick
        elif run:
            values[last.dest] = run[0]
    return values
