"""Routines (SPEC §8): routines.toml (`file`), the runs (`runner`), schedule triggers (`schedules`), the
API and GitHub fires (`fires`, `http_routes`), workspaces and the branch guard (`workspace`), env_file
secrets (`secrets`), edits (`editing`), and the routine.* handlers (`methods`)."""


def install(daemon) -> None:
    from bgd.routines.runner import install as install_routines
    install_routines(daemon)
