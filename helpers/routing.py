"""Version routing for A/B experiments: a weighted traffic split, sticky per key.

``TrafficSplit({"1": 0.9, "2": 0.1}).choose(key)`` picks a version. With a routing
key (a user, a tool, a lot — sent as a header), the choice is a pure function of
the key: the same key always lands on the same version while the weights stay
the same, so one tool's wafers are not judged by two models mid-experiment.
Without a key, the choice is random with the given weights.

The key is hashed to a point in [0, 1) and the versions own consecutive slices
of that interval in proportion to their weights. Pure: no server, no clock.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["TrafficSplit", "key_point"]


def key_point(key: str) -> float:
    """A stable, uniform point in [0, 1) for ``key`` (SHA-256, not Python's salted hash)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class TrafficSplit:
    weights: Mapping[str, float]
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        weights = {str(v): float(w) for v, w in dict(self.weights).items()}
        if not weights:
            raise ValueError("a traffic split needs at least one version")
        bad = {v: w for v, w in weights.items() if not (w >= 0 and w < float("inf"))}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if sum(weights.values()) <= 0:
            raise ValueError(f"at least one weight must be positive, got {weights}")
        object.__setattr__(self, "weights", dict(sorted(weights.items())))

    @classmethod
    def parse(cls, text: str) -> TrafficSplit:
        """``"1:0.9,2:0.1"`` -> ``TrafficSplit({"1": 0.9, "2": 0.1})`` (for flags and env)."""
        weights = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            version, sep, weight = part.partition(":")
            if not sep:
                raise ValueError(f"{part!r} is not VERSION:WEIGHT")
            try:
                weights[version.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"weight {weight!r} of version {version!r} is not a number") \
                    from None
        return cls(weights)

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {v: w / total for v, w in self.weights.items()}

    def choose(self, routing_key: str | None = None) -> str:
        point = key_point(routing_key) if routing_key else self._rng.random()
        cumulative = 0.0
        last = None
        for version, share in self.shares.items():
            if share == 0:
                continue
            cumulative += share
            last = version
            if point < cumulative:
                return version
        return last  # rounding left the point just past the end: the last live slice
