"""The web page (SPEC §13): every session live in a browser, served by the daemon's HTTP listener.

`install(daemon)` mounts the page's routes on the listener (`daemon.http`),
which then runs while `[web] enabled` (the default) says so.  The pages are
server-rendered HTML (Jinja2 templates, one stylesheet); htmx and its SSE
extension, shipped in `static/`, make them live from the daemon's event stream.
Everything a page does goes through the daemon's own method table.

While the page is off, nothing of it is imported (starlette, Jinja2 and
markdown-it stay unloaded, as the listener's own code does); a reload that
turns it on mounts it then.
"""

from __future__ import annotations


def install(daemon) -> None:
    daemon.web = None

    def mount_when_on(config) -> None:
        if not config.web_enabled and daemon.web is not None:
            daemon.web.end_streams()   # open pages stop following (their reconnects get 404)
        if config.web_enabled and daemon.web is None:
            from bgd.web.app import Web
            daemon.web = Web(daemon)
            daemon.http.mount("web", daemon.web.routes(), wanted=lambda: daemon.config.web_enabled)

    mount_when_on(daemon.config)
    # Registered after the listener's own hook, which looks at `wanted` again on every reload.
    daemon.on_reload.append(mount_when_on)
