"""The default deadline of one unary gRPC call, apart from ``rpc`` (which imports grpc), so
``edgectl --help`` can name it without loading grpc."""

from __future__ import annotations

DEFAULT_DEADLINE_S = 10.0
