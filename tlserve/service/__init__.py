"""The serving half: gRPC server, model registry following the repository, backends, batcher, client."""
