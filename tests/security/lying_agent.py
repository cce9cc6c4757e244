"""``edge-agent`` as a real process, but a lying peer: every byte its mTLS peer listener serves
(whole blobs and model chunks alike) is flipped, after the listener read it from the agent's
verified store. Everything else is the real agent (its CLI, enrollment identity, roster, MQTT,
installer and Predict). Run as ``python lying_agent.py run ARGS...`` (the agent's arguments);
each lie is written to stderr ("lying peer: ..."), so the test sees it was asked.

Only tests use this: no agent has a way to lie built in."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc

from edgefleet.agent import serving
from edgefleet.agent.cli import main
from edgefleet.v1 import artifact_pb2

_honest_fetch = serving.PeerArtifactServicer.Fetch


def _lying_fetch(
    self: serving.PeerArtifactServicer,
    request: artifact_pb2.FetchRequest,
    context: grpc.ServicerContext,
) -> Iterator[artifact_pb2.BlobChunk]:
    for reply in _honest_fetch(self, request, context):
        flipped = bytes(b ^ 0xFF for b in reply.data)
        sys.stderr.write(
            f"lying peer: served {len(flipped)} flipped bytes of {request.digest} "
            f"at offset {reply.offset}\n"
        )
        sys.stderr.flush()
        yield artifact_pb2.BlobChunk(offset=reply.offset, data=flipped, total_size=reply.total_size)


serving.PeerArtifactServicer.Fetch = _lying_fetch  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
