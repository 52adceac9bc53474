"""Sessions: the durable record (`model`), the runner (`manager`) and the session.* handlers."""
