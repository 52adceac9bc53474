"""Pure, I/O-free code shared by the daemon and every client."""
