"""Split inference over ZeroMQ (and over gRPC, beside it): server, client, per-call performance log and its analyser.

``RpcServer`` holds the weights (the source's "GPU" side); ``RpcClient`` calls it
and logs every call in the source's format; ``SplitDecoder`` runs the decoder on
the client ("TEE" side) with the linear work on the server; ``analyze`` reads a
log back and writes the source's report. ``grpc_transport`` serves and calls the same methods over gRPC.
"""

from .client import CallRecord, RpcClient
from .server import METHODS, RpcServer
from .split import GRANULARITIES, SplitDecoder
from .wire import CODECS, WIRE_DTYPES, PayloadTooLarge, ProtocolError, RpcError, RpcTimeout

__all__ = [
    "CODECS", "GRANULARITIES", "METHODS", "WIRE_DTYPES", "CallRecord", "PayloadTooLarge", "ProtocolError",
    "RpcClient", "RpcError", "RpcServer", "RpcTimeout", "SplitDecoder",
]  # fmt: skip
