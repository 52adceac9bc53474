"""bgctl: the command-line client of bgd."""
