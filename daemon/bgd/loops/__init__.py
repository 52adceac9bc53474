"""Loop tasks (SPEC §6): the pure book of loops (`book`), the runner (`runner`), loop.* handlers."""


def install(daemon) -> None:
    from bgd.loops.runner import install as install_loops
    install_loops(daemon)
