"""Wire messages shared by the gateway and the backend: msgspec Structs, no I/O."""
