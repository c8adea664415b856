"""The transports: per API, a codec and thin servicers converting its messages (gRPC protos, REST
JSON) to core calls and back; what every call shares (``calls``); request budgets and parsing limits.
Nothing here knows the registry: every answer comes from ``tlserve.service.core``."""
