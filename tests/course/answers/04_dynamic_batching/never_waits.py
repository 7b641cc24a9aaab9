# Wrong: sends whatever is queued at once (never waits for company).
class MyBatchPolicy:
    def __init__(self, max_batch_size, max_wait_s):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("bad settings")
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s

    def decide(self, queued, oldest_wait_s):
        return min(queued, self.max_batch_size)

    def wait_budget_s(self, oldest_wait_s):
        return max(0.0, self.max_wait_s - oldest_wait_s)
