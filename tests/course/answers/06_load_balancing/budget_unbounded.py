import time


class MyRetryBudget:
    """Every failure is retried: the budget is never checked."""

    def __init__(self, ratio=0.1, min_retries=3, window_s=10.0, clock=time.monotonic):
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock
        self.requests = []

    def request(self):
        self.requests.append(self.clock())

    def try_retry(self):
        return True
