import time


class MyRetryBudget:
    """Plays safe by never retrying: no retry storm, but every failure reaches the client."""

    def __init__(self, ratio=0.1, min_retries=3, window_s=10.0, clock=time.monotonic):
        self.ratio, self.min_retries = ratio, min_retries
        self.window_s, self.clock = window_s, clock

    def request(self):
        pass

    def try_retry(self):
        return False
