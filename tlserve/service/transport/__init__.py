"""gRPC transports: thin servicers converting protos to core calls and back, one error map, the server."""
