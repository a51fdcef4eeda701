"""What a served request leaves out, and folds in, from the feedback store.

A known user's ``/recommend`` leaves out the items they bought, rated or disliked through
``/feedback`` since training, seen by every worker at most ``staleness_s`` after the commit; with
``feedback.foldin`` the items they showed interest in join their history. :class:`Exclusions` caches
each user's sets as :class:`recforge.feedback.FeedbackStore` reads them; :func:`dense_feedback`
turns them into the served package's dense items, :func:`asked_for` says how long a list to ask a
model for, and :func:`leave_out` takes the excluded items out of a ranked list.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from recforge.artifacts import plain

if TYPE_CHECKING:
    from recforge.feedback import FeedbackStore
    from recforge.interactions import IdMaps

EXCLUSION_CACHE_USERS = 100_000


class Exclusions:
    """Per-user exclusion sets read from the store, each reused for at most ``staleness_s`` seconds.

    ``staleness_s`` is the bound: an event committed by any worker is seen by every worker's next
    request at most this long after its commit (0: every request reads the store). Thread-safe, bounded
    (the least recently used users leave first).
    """

    def __init__(
        self,
        store: FeedbackStore,
        staleness_s: float = 1.0,
        size: int = EXCLUSION_CACHE_USERS,
        *,
        interests: bool = False,
    ) -> None:
        self.store, self.staleness_s, self.size = store, float(staleness_s), int(size)
        self.interests = interests  # also read each user's interests (feedback.foldin)
        self._entries: OrderedDict[str, tuple[float, frozenset[str], tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str | int) -> frozenset[str]:
        """The items to leave out of ``user_id``'s lists, at most ``staleness_s`` old."""
        return self.user(user_id)[0]

    def user(self, user_id: str | int) -> tuple[frozenset[str], tuple[str, ...]]:
        """(items to leave out, interests oldest first; empty unless ``interests``), at most ``staleness_s`` old."""
        key = str(user_id)
        now = time.monotonic()
        if self.staleness_s > 0:
            with self._lock:
                found = self._entries.get(key)
                if found is not None and now - found[0] < self.staleness_s:
                    self._entries.move_to_end(key)
                    return found[1], found[2]
        # read after `now` was taken: an entry is never older than its stamp says
        excluded = self.store.exclusions(key)
        liked = self.store.interests(key) if self.interests else ()
        if self.staleness_s > 0:
            with self._lock:
                self._entries[key] = (now, excluded, liked)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return excluded, liked

    def forget(self, user_ids: Iterable[str | int]) -> None:
        """Drop cached entries (this worker's own writes are then seen at once)."""
        with self._lock:
            for user in user_ids:
                self._entries.pop(str(user), None)


def dense_feedback(
    exclusions: Exclusions | None, maps: IdMaps, user: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Dense items dense ``user`` bought, rated or disliked through /feedback, and (feedback.foldin) the
    items they showed interest in, oldest first; None for none (or no store: ``exclusions`` None)."""
    if exclusions is None:
        return None, None
    excluded, liked = exclusions.user(str(plain(maps.user_ids[user])))
    dense = []
    for items in (excluded, liked):
        found = [maps.lookup_item(i) for i in items]
        known = [i for i in found if i >= 0]  # items new since training are in no model
        dense.append(np.array(known, dtype=np.int64) if known else None)
    return dense[0], dense[1]


def asked_for(k: int, excluded: np.ndarray | None, n_items: int) -> int:
    """How long a list to ask a model for: ``k`` plus as many as are excluded (at most every item)."""
    return k if excluded is None else min(k + len(excluded), max(k, n_items))


def leave_out(
    items: np.ndarray, scores: np.ndarray, excluded: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of a ranked list without the ``excluded`` items (the list as it is for None)."""
    if excluded is None:
        return items, scores
    items, scores = np.ravel(items), np.ravel(scores)
    keep = ~np.isin(items, excluded)
    return items[keep][:k], scores[keep][:k]
