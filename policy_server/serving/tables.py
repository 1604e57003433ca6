"""Bounded server-side tables: sessions and peers with a TTL and a cap."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    """A map with a time-to-live and a size cap (least recently used goes first): bounded server memory
    whatever clients do, and idle robots do not hold a GPU's history cache forever."""

    def __init__(self, ttl_s: float, cap: int) -> None:
        self.ttl_s, self.cap = ttl_s, cap
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        """The value (its use refreshes it), or None when unknown or expired."""
        item = self._items.get(key)
        if item is None or now - item[0] > self.ttl_s:
            return None
        self._items[key] = (now, item[1])
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V, now: float) -> list[K]:
        """Insert or replace; returns the keys evicted to stay within the cap."""
        self._items[key] = (now, value)
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.cap:
            evicted.append(self._items.popitem(last=False)[0])
        return evicted

    def discard(self, key: K, value: V) -> None:
        """Remove `key` if it still maps to `value` (not to a newer value put since)."""
        item = self._items.get(key)
        if item is not None and item[1] is value:
            del self._items[key]

    def expire(self, now: float) -> list[K]:
        expired = [k for k, (t, _) in self._items.items() if now - t > self.ttl_s]
        for k in expired:
            del self._items[k]
        return expired

    def used_since(self, since: float) -> int:
        return sum(1 for t, _ in self._items.values() if t >= since)
