"""The descriptor pool of tlserve's generated wire code (see protos/generate.py for why it is private).

Holds the well-known types the protos import, plus gRPC's health and reflection services so that
server reflection can describe every service the server exposes.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)

# NOTE: imported after the pool exists; these register in the default pool, we copy their files.
from grpc_health.v1 import health_pb2  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2  # noqa: E402

for _module in (health_pb2, reflection_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
