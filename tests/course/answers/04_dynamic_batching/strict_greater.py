# Wrong: compares with > where the statement says >= (boundaries).
class MyBatchPolicy:
    def __init__(self, max_batch_size, max_wait_s):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("bad settings")
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s

    def decide(self, queued, oldest_wait_s):
        if queued <= 0:
            return 0
        if queued > self.max_batch_size:
            return self.max_batch_size
        if oldest_wait_s > self.max_wait_s:
            return queued
        return 0

    def wait_budget_s(self, oldest_wait_s):
        return max(0.0, self.max_wait_s - oldest_wait_s)
