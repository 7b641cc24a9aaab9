import math
import time


class MyPeakEwma:
    """Keeps the decayed value up to date on every read and write; correct, unlike the reference."""

    def __init__(self, tau_s, clock=time.monotonic):
        self.tau_s = tau_s
        self.clock = clock
        self._last = None       # (time, estimate) of the last sample, None before any

    def _now_value(self, now):
        if self._last is None:
            return 0.0
        then, estimate = self._last
        return estimate / math.exp((now - then) / self.tau_s)

    def observe(self, latency_s):
        now = self.clock()
        if self._last is None or latency_s > self._last[1]:
            self._last = (now, latency_s)
            return
        then, estimate = self._last
        keep = math.exp(-(now - then) / self.tau_s)
        self._last = (now, keep * estimate + (1 - keep) * latency_s)

    @property
    def value(self):
        return self._now_value(self.clock())
