"""bgd: the bgagents daemon."""

__version__ = "0.1.0"
