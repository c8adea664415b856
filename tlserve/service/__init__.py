"""The serving half: gRPC server, model repository watcher, backends, batcher, client."""
