import time


class MyRetryBudget:
    """One list of (time, kind) events, filtered on each decision; correct, unlike the reference."""

    def __init__(self, ratio=0.1, min_retries=3, window_s=10.0, clock=time.monotonic):
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock
        self.events = []

    def request(self):
        self.events.append((self.clock(), "request"))

    def try_retry(self):
        now = self.clock()
        self.events = [(t, kind) for t, kind in self.events if now - t < self.window_s]
        requests = sum(kind == "request" for _, kind in self.events)
        retries = sum(kind == "retry" for _, kind in self.events)
        allowed = self.min_retries + self.ratio * requests
        if retries >= allowed:
            return False
        self.events.append((now, "retry"))
        return True
