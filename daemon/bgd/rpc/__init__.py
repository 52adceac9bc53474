"""The socket and the method table: connections in `server`, handlers registered in `table`, what a
connection made for one session may call in `scope`."""
