# A correct batch policy in another style: a dataclass.
from dataclasses import dataclass


@dataclass
class MyBatchPolicy:
    max_batch_size: int
    max_wait_s: float

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s")

    def decide(self, queued, oldest_wait_s):
        full = queued >= self.max_batch_size
        timed_out = queued > 0 and oldest_wait_s >= self.max_wait_s
        return min(queued, self.max_batch_size) if (full or timed_out) else 0

    def wait_budget_s(self, oldest_wait_s):
        left = self.max_wait_s - oldest_wait_s
        return left if left > 0 else 0.0
