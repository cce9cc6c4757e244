"""``with SomeClient(...) as client:`` for the clients of both sides (the controller's API,
an agent's inference, failover and fast-path clients): a base that enters as itself and calls
``close`` on the way out, so that each client writes only its ``close``."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Closing(abc.ABC):
    """A client that holds connections until ``close``; usable as a context manager."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the client holds (channels, sockets, shared memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
