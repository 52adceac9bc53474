"""bgctl's two readings of a command line agree: `quick_parse` gives argparse's namespace or declines.

And argparse's behaviour is kept for every command: `--help` (exit 0), unknown options and missing
arguments (exit 2, `bgctl: ...` plus the hint), unknown commands.  In-process: no daemon is needed,
since every case here stops at parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgctl import arguments, commands, full_parser
from bgctl.arguments import Spec, SubSpecs, quick_parse
from bgctl.cli_common import UsageError
from bgctl.main import _command_word, build_parser, command_spec, main


def test_constants_are_argparses():
    assert arguments.SUPPRESS == argparse.SUPPRESS
    assert arguments.REMAINDER == argparse.REMAINDER


def _paths(spec: Spec, prefix: tuple = ()) -> list[tuple[tuple, Spec]]:
    """Every parser under `spec`, by the words that reach it."""
    found = [(prefix, spec)] if prefix else []
    for what, args, _ in spec.calls:
        if what == "add_subparsers":
            for name, child in args[0].parsers.items():
                found += _paths(child, (*prefix, name))
    return found


def _registered(module) -> list[str]:
    root = Spec()
    sub = root.add_subparsers(dest="command")
    module.register(sub, lambda p: None)
    return list(sub.parsers)


def test_the_command_table_names_what_each_module_registers():
    from_modules = {word: name for name, module in zip(commands.MODULES, commands.modules())
                    for word in _registered(module)}
    assert from_modules == commands.COMMANDS


PATHS = [words for words, _ in _paths(command_spec())]


def test_every_command_is_covered():
    assert {words[0] for words in PATHS} == set(commands.COMMANDS)
    assert ("task", "add") in PATHS and ("schedule", "explain") in PATHS


class _Refused(Exception):
    pass


class _StrictParser(full_parser.Parser):
    def error(self, message):
        raise _Refused(message)

    def exit(self, status=0, message=None):  # --help
        raise _Refused(f"exit {status}")


def _argparse(parser, argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(parser.parse_args(argv))
        except _Refused:
            return None


def _tokens(spec_path: tuple) -> st.SearchStrategy[list[str]]:
    """Words a person might type at this command, a word or two at a time: its flags, its options with
    a fitting value, its choices and subcommands, other words, and mistakes."""
    flags, valued = {"-h", "--help"}, {}
    choices: set[str] = set()
    spec = command_spec(spec_path[0])
    specs = [spec]
    for word in spec_path:
        spec = next(args[0] for what, args, _ in spec.calls if what == "add_subparsers").parsers[word]
        specs.append(spec)
    for spec in specs:
        for what, args, kwargs in spec.calls:
            if what == "add_subparsers":
                choices.update(args[0].parsers)
            elif what == "add_argument" and args[0].startswith("-"):
                if kwargs.get("action") in ("store_true", "store_false"):
                    flags.update(args)
                else:
                    values = (st.sampled_from([str(c) for c in kwargs["choices"]]) if kwargs.get("choices")
                              else st.sampled_from(["3", "abc"]) if kwargs.get("type") is int
                              else st.sampled_from(["abc", "say hi", "", "UTC"]))
                    valued.update(dict.fromkeys(args, values))
            elif what == "add_argument":
                choices.update(str(c) for c in kwargs.get("choices") or ())
    options = sorted(flags | set(valued))
    words = st.sampled_from(sorted(choices) + ["abc", "say hi", "", "3", "5m", "x=y"])
    single = st.one_of(
        st.sampled_from(sorted(flags)),
        st.sampled_from(options).map(lambda o: o[:max(2, len(o) - 2)]),    # abbreviations
        st.sampled_from([o for o in options if o.startswith("--")]).map(lambda o: o + "=v"),
        words, words,
        st.sampled_from(["-1", "-", "--", "-fx", "--bogus", "--json=1"]),
        st.text(alphabet="ab -=", max_size=4),
    ).map(lambda word: [word])
    with_value = st.sampled_from(sorted(valued)).flatmap(lambda o: valued[o].map(lambda v: [o, v]))
    return st.one_of(single, with_value, with_value)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_quick_parse_agrees_with_argparse(path):
    spec = command_spec(path[0])
    parser = full_parser.build(spec, only=path[0], parser_class=_StrictParser)
    prefix = st.lists(st.sampled_from([["--json"], ["--no-spawn"], ["--socket", "/tmp/s"], ["--socket=/tmp/s"]]),
                      max_size=2).map(lambda groups: [word for group in groups for word in group])

    @settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
    @given(before=prefix, groups=st.lists(_tokens(path), max_size=5))
    def check(before, groups):
        argv = [*before, *path, *(word for group in groups for word in group)]
        assert _command_word(argv) == path[0]  # as main() chooses the module and the one parser to build
        quick = quick_parse(spec, argv)
        if quick is not None:
            assert vars(quick) == _argparse(parser, argv), argv

    check()


QUICK = [
    ["ls", "--json"], ["--json", "ls"], ["ls", "--all", "--state", "working"], ["ls", "--state=failed", "--cwd", "d"],
    ["show", "abc"], ["show", "abc", "--json"], ["dispatch", "--cwd", "/tmp", "fix", "the", "test"],
    ["dispatch", "say", "--json"], ["logs", "abc", "-f", "--since", "3"], ["reply", "abc", "yes", "go"],
    ["approve", "abc", "--always"], ["deny", "abc", "-m", "no"], ["events", "-f", "--session", "s"],
    ["rpc", "daemon.status"], ["rpc", "session.list", '{"all": true}'], ["daemon", "status", "--json"],
    ["task", "ls"], ["task"], ["task", "add", "nightly", "--schedule", "daily", "do", "it"],
    ["schedule", "explain", "every", "15", "minutes", "--next", "3"], ["loop", "5m", "check"],
    ["--socket", "/tmp/s", "--no-spawn", "ls"],
]


@pytest.mark.parametrize("argv", QUICK, ids=[" ".join(a) for a in QUICK])
def test_everyday_command_lines_take_the_quick_path(argv):
    spec = command_spec(_command_word(argv))
    quick = quick_parse(spec, argv)
    assert quick is not None
    assert vars(quick) == _argparse(full_parser.build(spec, parser_class=_StrictParser), argv)


@pytest.mark.parametrize("argv", [
    ["ls", "--help"], ["ls", "--al"], ["dispatch", "say", "--n"], ["rpc", "m", "--json", "p"], ["show", "a", "b"],
    ["logs", "x", "--since", "-1"], ["--", "ls"], ["ls", "--state", "sleepy"], ["daemon", "bogus"], ["task", "bogus"],
    ["dispatch", "--", "say"], ["events", "-f5"],
])
def test_unusual_command_lines_are_left_to_argparse(argv):
    assert quick_parse(command_spec(_command_word(argv) or "ls"), argv) is None


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(argv), out=out, err=err)
        except SystemExit as exc:  # argparse's --help
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _full_help(path: tuple) -> str:
    parser = full_parser.build(command_spec())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*path, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_has_argparses_help(path):
    code, out, err = _run(*path, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: bgctl {' '.join(path)} ")
    assert out == _full_help(path)  # building only this command's parser changes nothing


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_refuses_an_unknown_option(path):
    code, out, err = _run(*path, "--no-such-flag")
    assert code == 2 and out == ""
    first, hint = err.splitlines()
    # "unrecognized arguments: --no-such-flag", or first the arguments it still requires
    assert first.startswith("bgctl: ") and ("--no-such-flag" in first or "arguments are required" in first)
    assert hint.startswith("see `bgctl") and hint.endswith(" --help`")


@pytest.mark.parametrize("argv, message", [
    (["show"], "bgctl: the following arguments are required: id"),
    (["reply"], "bgctl: the following arguments are required: id, TEXT..."),
    (["rename"], "bgctl: the following arguments are required: id, NAME"),
    (["approve"], "bgctl: the following arguments are required: id"),
    (["logs", "x", "--since", "soon"], "bgctl: argument --since: invalid int value: 'soon'"),
    (["ls", "--state", "sleepy"], "bgctl: argument --state: invalid choice: 'sleepy' (choose from 'working', "
                                  "'needs_input', 'sleeping', 'completed', 'failed', 'stopped')"),
    (["daemon"], "bgctl: the following arguments are required: action"),
    (["daemon", "reboot"], "bgctl: argument action: invalid choice: 'reboot' (choose from 'start', 'stop', "
                           "'status', 'restart')"),
    (["rpc"], "bgctl: the following arguments are required: method"),
    (["rpc", "m", "p", "q"], "bgctl: unrecognized arguments: q"),
    (["task", "show"], "bgctl: the following arguments are required: name"),
    (["task", "history", "x", "--limit", "many"], "bgctl: argument --limit: invalid int value: 'many'"),
    (["schedule", "explain"], "bgctl: the following arguments are required: SPEC"),
    (["schedule", "explain", "daily", "--next", "some"], "bgctl: argument --next/-n: invalid int value: 'some'"),
    (["events", "--since"], "bgctl: argument --since: expected one argument"),
    (["--socket"], "bgctl: argument --socket: expected one argument"),
    (["ls", "--s", "x"], "bgctl: ambiguous option: --s could match --socket, --state"),
    (["dispatch", "say", "--n"], "bgctl: ambiguous option: --n could match --no-spawn, --name"),
])
def test_usage_errors_are_exit_2_with_argparses_message(argv, message):
    code, out, err = _run(*argv)
    assert code == 2 and out == "", err
    assert err.splitlines()[0] == message


def test_an_unknown_command_lists_the_real_ones():
    code, out, err = _run("frobnicate")
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith("bgctl: argument COMMAND: invalid choice: 'frobnicate' (choose from ")
    assert all(f"'{word}'" in first for word in commands.COMMANDS)
    assert err.splitlines()[1] == "see `bgctl --help`"


def test_no_command_prints_the_whole_help_and_exits_2():
    code, out, err = _run()
    assert code == 2 and err == ""
    assert out == build_parser().format_help()
    assert all(f"    {word} " in out for word in commands.COMMANDS)


def test_top_level_help_lists_every_command():
    code, out, _ = _run("--help")
    assert code == 0
    assert all(f"    {word} " in out for word in commands.COMMANDS)


def test_a_spec_replays_into_the_same_argparse_calls():
    spec = Spec(prog="p")
    spec.add_argument("--x", default=arguments.SUPPRESS)
    group = spec.add_subparsers(dest="verb")
    assert isinstance(group, SubSpecs)
    child = group.add_parser("go", help="go")
    child.add_argument("rest", nargs=arguments.REMAINDER)
    parser = full_parser.build(spec)
    assert vars(parser.parse_args(["go", "a", "--x", "1"])) == {"verb": "go", "rest": ["a", "--x", "1"]}
    assert vars(parser.parse_args(["--x", "1"])) == {"x": "1", "verb": None}
    with pytest.raises(UsageError):
        parser.parse_args(["--y"])
