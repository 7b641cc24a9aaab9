"""Variable-length inputs: padding, its waste, and bucketing by length.

A batch of token sequences becomes one ``(B, T)`` tensor padded to its longest
member, and the model computes on every padded position. Mix a 3-token note with
a 120-token report and 97 % of the short one's row is wasted work.

Bucketing sends requests to separate queues by length (``boundaries=(16, 32, 64)``
gives buckets <=16, <=32, <=64 and longer), so a batch holds similar lengths. The
price: each bucket fills more slowly, so a batch waits longer for company — which
is why the same ``BatchPolicy`` (max wait) still bounds the wait in every bucket.
The buckets share one batcher's workers (``DynamicBatcher(group_of=...)``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from .batching import BatchPolicy, DynamicBatcher
from .embedder import pad_to_longest  # re-exported: padding is what buckets reduce

__all__ = ["bucket_for", "padding_waste", "pad_to_longest", "BucketedBatcher"]


def bucket_for(length: int, boundaries: Sequence[int]) -> int:
    """Index of the first bucket whose upper bound holds ``length`` (the last one if none)."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return bisect.bisect_left(list(boundaries), length)


def padding_waste(lengths: Sequence[int]) -> float:
    """Share of a padded batch's positions that are padding: 1 - sum(len) / (B * max(len))."""
    if not lengths:
        return 0.0
    longest = max(lengths)
    return 0.0 if longest == 0 else 1.0 - sum(lengths) / (len(lengths) * longest)


class BucketedBatcher(DynamicBatcher):
    """A ``DynamicBatcher`` whose groups are length buckets: a batch holds similar lengths.

    The buckets share the batcher's workers and its bounded queue: on a CPU, two
    buckets computing at once would only fight over the same cores.
    """

    def __init__(self, predict_batch: Callable[[list[Any]], Sequence[Any]],
                 policy: BatchPolicy, boundaries: Sequence[int],
                 length_of: Callable[[Any], int], **batcher_kwargs: Any) -> None:
        if list(boundaries) != sorted(set(boundaries)) or not boundaries:
            raise ValueError(f"boundaries must be increasing and non-empty, got {boundaries}")
        self.boundaries = tuple(boundaries)
        self.length_of = length_of
        super().__init__(predict_batch, policy, group_of=self.bucket_of, **batcher_kwargs)

    def bucket_of(self, item: Any) -> int:
        return bucket_for(self.length_of(item), self.boundaries)
