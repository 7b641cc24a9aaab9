# A correct router in another style: imports at the top, a helper in the cell, bisect.
import bisect
import hashlib as _h
import random


def _unit(key):
    return int.from_bytes(_h.blake2b(str(key).encode(), digest_size=8).digest(), "little") / 2**64


def choose_version(routing_key, weights):
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"bad weights {weights}")
    live = sorted((v, w) for v, w in weights.items() if w > 0)
    total = sum(w for _, w in live)
    edges, acc = [], 0.0
    for _, w in live:
        acc += w / total
        edges.append(acc)
    point = random.random() if routing_key is None else _unit(routing_key)
    return live[min(bisect.bisect_right(edges, point), len(live) - 1)][0]
