import time


class MyRetryBudget:
    """Counts refused retries as spent too: once refused, the budget stays closed longer."""

    def __init__(self, ratio=0.1, min_retries=3, window_s=10.0, clock=time.monotonic):
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock
        self.requests, self.retries = [], []

    def request(self):
        self.requests.append(self.clock())

    def try_retry(self):
        now = self.clock()
        self.requests = [t for t in self.requests if t > now - self.window_s]
        self.retries = [t for t in self.retries if t > now - self.window_s]
        granted = len(self.retries) < self.min_retries + self.ratio * len(self.requests)
        self.retries.append(now)
        return granted
