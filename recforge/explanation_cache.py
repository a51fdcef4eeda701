"""The service's explanation cache: a bounded LRU of explanation texts per (user, item).

A package is immutable once loaded, so the same (user, item) always gets the same evidence: an
explanation (generated or template) is computed once while the pair stays cached. Each
:class:`recforge.engine.Engine` holds one; a newly loaded package starts with an empty one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

EXPLANATION_CACHE_SIZE = 10_000  # (user, item) explanations kept by the service


class ExplanationCache:
    """A bounded, thread-safe LRU of explanation texts keyed by (dense user, item index).

    A package is immutable once loaded, so the same (user, item) always gets
    the same evidence: an explanation (generated or template) is computed once.
    """

    def __init__(self, size: int = EXPLANATION_CACHE_SIZE) -> None:
        self.size = max(0, int(size))
        self._entries: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, int]) -> str | None:
        with self._lock:
            text = self._entries.get(key)
            if text is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return text

    def put(self, key: tuple[int, int], text: str) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._entries[key] = text
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
