"""The socket and the method table: connections in `server`, handlers registered in `table`."""
