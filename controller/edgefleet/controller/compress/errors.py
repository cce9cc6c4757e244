"""Compression errors, on top of ``edgefleet.common.errors`` (same rule: by what the caller does).

::

    PermanentError
    ├── InvalidInputError   not a model, external data, empty or mismatched eval/calibration data
    └── PassSkippedError    this technique cannot handle this model (.technique, .reason);
                            the search records it as skipped and runs the other candidates
"""

from __future__ import annotations

from edgefleet.common.errors import InvalidInputError, PermanentError

__all__ = ["InvalidInputError", "PassSkippedError"]


class PassSkippedError(PermanentError):
    def __init__(self, technique: str, reason: str) -> None:
        super().__init__(f"{technique} skipped: {reason}")
        self.technique = technique
        self.reason = reason
