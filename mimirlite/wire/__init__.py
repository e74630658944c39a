"""Sans-IO protocol cores: pure state machines over bytes, no sockets, no clock."""
