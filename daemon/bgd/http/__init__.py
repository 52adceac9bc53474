"""The daemon's HTTP listener (SPEC §8): hypercorn serving one starlette app inside the daemon's trio run.

Features add their routes with `daemon.http.mount(name, routes, wanted=...)`
(`service.py`); the listener runs while some mounted feature wants it (or
`[http] enabled = true`). `errors.json_error` builds the JSON error every
endpoint answers with. starlette and hypercorn are imported only once something
listens, so a daemon without HTTP starts as fast as before. See docs/http.md.
"""

from bgd.http.service import HttpService

__all__ = ["HttpService"]
