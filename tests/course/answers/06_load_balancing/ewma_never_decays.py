import math
import time


class MyPeakEwma:
    """Peaks, averages, but never decays between samples: once slow, slow for ever."""

    def __init__(self, tau_s, clock=time.monotonic):
        self.tau_s = tau_s
        self.clock = clock
        self.estimate = 0.0
        self.stamp = clock()

    def observe(self, latency_s):
        now = self.clock()
        if latency_s > self.estimate:
            self.estimate = latency_s
        else:
            weight = math.exp(-(now - self.stamp) / self.tau_s)
            self.estimate = self.estimate * weight + latency_s * (1 - weight)
        self.stamp = now

    @property
    def value(self):
        return self.estimate
