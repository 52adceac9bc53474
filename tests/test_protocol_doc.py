"""docs/protocol.md and the code must agree: every method, every error code."""

import re
from pathlib import Path

from bgd import features
from bgcore import jsonrpc
from bgd.rpc.table import METHODS

features.register_methods()

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def test_every_method_is_documented_and_every_documented_method_exists():
    documented = set(re.findall(r"^### `([a-z_]+\.[a-z_.]+)`", DOC, re.M))
    assert documented == set(METHODS), (
        f"undocumented: {sorted(set(METHODS) - documented)}; documented but missing: {sorted(documented - set(METHODS))}")


def test_error_table_matches_the_codec():
    rows = dict((int(code), name.strip()) for code, name in re.findall(r"^\| (-32\d\d\d) \| ([a-z ]+) \|", DOC, re.M))
    assert rows == jsonrpc.ERROR_NAMES


def test_every_method_has_a_summary():
    assert all(m.summary for m in METHODS.values())
