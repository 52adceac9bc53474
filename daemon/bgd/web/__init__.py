"""The web page (SPEC §13): every session live in a browser, served by the daemon's HTTP listener.

`install(daemon)` mounts its routes on the listener (`daemon.http`), which runs
while `[web] enabled` (the default) says so.  The pages are server-rendered
HTML (Jinja2 templates, one stylesheet); htmx and its SSE extension, shipped in
`static/`, make them live from the daemon's event stream.  Everything a page
does goes through the daemon's own method table.
"""

from __future__ import annotations


def install(daemon) -> None:
    from bgd.web.app import Web

    web = Web(daemon)
    daemon.web = web
    # The listener looks at `wanted` again whenever the config is reloaded.
    daemon.http.mount("web", web.routes(), wanted=lambda: daemon.config.web_enabled)
