"""The context-manager half of every driver: `with Driver(cfg) as d:` connects, and leaving the block
disconnects even on an exception (a franky connection or camera pipeline left open blocks the next run)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Connectable:
    """Mixin for drivers that define `connect()` and `disconnect()`."""

    def connect(self) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()
