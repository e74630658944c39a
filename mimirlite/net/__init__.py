"""asyncio shells around the sans-IO cores: TCP, connection upgrade, streams, the host."""
