"""The agent stdout line splitter (bgd.agents.stdout_lines), shared by the daemon's and the worker's
process shells: plain code, tested without processes."""

from __future__ import annotations

from hypothesis import given, strategies as st

from bgd.agents.stdout_lines import LineSplitter, OversizedLine


def split(chunks: list[bytes], max_line: int = 1 << 20) -> list[bytes]:
    out: list[bytes] = []
    lines = LineSplitter(out.append, max_line)
    for chunk in chunks:
        lines.feed(chunk)
    lines.end()
    return out


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12), st.data())
def test_lines_are_the_same_however_the_stream_is_cut(lines, data):
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    assert split(chunks) == [line for line in lines if line.strip()]


def test_a_last_line_without_newline_and_blank_lines():
    assert split([b"one\n\n  \ntw", b"o"]) == [b"one", b"two"]


def test_an_oversized_line_is_one_marker_and_the_next_line_comes_whole():
    out = split([b"a" * 3000, b"a" * 3000, b"b" * 100 + b"\nnext\n"], max_line=5000)
    assert len(out) == 2 and isinstance(out[0], OversizedLine)
    assert out[0] == b"a" * 4096 and out[0].total == 6000
    assert out[1] == b"next" and not isinstance(out[1], OversizedLine)
