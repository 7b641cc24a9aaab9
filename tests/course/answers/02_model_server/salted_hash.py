# Wrong: Python's hash(), salted per process, so two replicas disagree.
import random


def choose_version(routing_key, weights):
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("bad weights")
    total = sum(weights.values())
    point = random.random() if routing_key is None else (hash(routing_key) % 10_000) / 10_000
    acc = 0.0
    for v, w in sorted(weights.items()):
        if w <= 0:
            continue
        acc += w / total
        if point < acc:
            return v
    return [v for v, w in sorted(weights.items()) if w > 0][-1]
