import time


class MyRetryBudget:
    """Counts since the start, never forgetting: a burst of failures long ago still counts."""

    def __init__(self, ratio=0.1, min_retries=3, window_s=10.0, clock=time.monotonic):
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock
        self.requests = self.retries = 0

    def request(self):
        self.requests += 1

    def try_retry(self):
        if self.retries < self.min_retries + self.ratio * self.requests:
            self.retries += 1
            return True
        return False
