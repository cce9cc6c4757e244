"""Contract code shared by the controller, the agent and edgectl.

Lives beside the ``.proto`` files because it *is* the contract in Python form: domain twins of
the wire messages (``types``), their conversion (``wire``), topic names (``topics``), signed
envelopes (``signing``) and content digests (``digests``). ``types`` and ``backoff`` are pure;
``wire`` is the only module here that touches generated protobuf code.
"""
