"""`ByteBoundedLRU`: a least-recently-used cache bounded by the bytes of what it holds.

Training revisits its inputs every epoch (decoded images, frozen-backbone features); an unbounded
dict of them grows with the dataset until the machine runs out of memory. This cache keeps the most
recently used entries whose sizes add up to at most `max_bytes` and evicts the oldest beyond that, so
memory stays flat whatever the dataset size. Plain Python: the size of an entry is what `sizeof`
says (numpy arrays and torch tensors by default).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


def nbytes(value: Any) -> int:
    """Bytes of a numpy array, a torch tensor, or a tuple/list/dict of them (other values count 0)."""
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "nbytes"):  # numpy arrays; torch tensors since 2.1
        return int(value.nbytes)
    return 0


class ByteBoundedLRU(Generic[V]):
    """get / put with least-recently-used eviction once the entries hold more than `max_bytes`.

    An entry larger than `max_bytes` is not stored (max_bytes 0 disables the cache). Counters
    `hits`, `misses` and `evictions` tell how well the budget fits the working set."""

    def __init__(self, max_bytes: int, sizeof: Callable[[V], int] = nbytes) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = int(self._sizeof(value))
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted
            self.evictions += 1

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}
