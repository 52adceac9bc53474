"""Desktop tasks (SPEC §7): the pure scheduler, the runner over tasks.toml, task.* handlers, worktrees."""


def install(daemon) -> None:
    from bgd.tasks.runner import install as install_tasks
    install_tasks(daemon)
