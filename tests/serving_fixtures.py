"""Test-double models for the server tests: slow ones (to build queues) and faulty ones.

They are importable module-level classes so a subprocess server can unpickle them
from a test repository (tests put this folder on PYTHONPATH).
"""

import threading
import time

import numpy as np

from helpers.models import ModelConfig, TensorSpec

POISON = -999.0  # a first feature of this value makes FaultyModel raise


def make_config(name, version=1, n_features=8):
    return ModelConfig(name=name, version=version, platform="test_double",
                       inputs=[TensorSpec("process_features", "FP32", [-1, n_features])],
                       outputs=[TensorSpec("defect_probability", "FP32", [-1])],
                       weights_file="", weights_sha256="")


class SlowModel:
    """Sleeps ``delay_s`` per call, then returns the mean of each row; counts its calls."""

    def __init__(self, name="slow", delay_s=0.05, version=1):
        self.config = make_config(name, version)
        self.delay_s = delay_s
        self.calls = []
        self.release = threading.Event()
        self.release.set()

    def predict(self, x):
        self.release.wait(30)
        time.sleep(self.delay_s)
        self.calls.append(len(x))
        return x.mean(axis=1).astype(np.float32)


class FaultyModel:
    """Raises for any batch that holds a row starting with POISON."""

    def __init__(self, name="faulty"):
        self.config = make_config(name)

    def predict(self, x):
        if (x[:, 0] == POISON).any():
            raise ValueError("sensor frame corrupt")
        return np.full(len(x), 0.5, dtype=np.float32)


class SlowEstimator:
    """A scikit-learn-shaped classifier that sleeps per call (for subprocess servers)."""

    n_features_in_ = 8

    def __init__(self, delay_s=0.05):
        self.delay_s = delay_s

    def get_params(self, deep=True):
        return {"delay_s": self.delay_s}

    def predict_proba(self, x):
        time.sleep(self.delay_s)
        p = np.full(len(x), 0.25)
        return np.column_stack([1 - p, p])


class FaultyEstimator(SlowEstimator):
    """Raises for any batch holding a row whose first feature is POISON (subprocess tests)."""

    def __init__(self):
        super().__init__(delay_s=0.0)

    def predict_proba(self, x):
        if (x[:, 0] == POISON).any():
            raise ValueError("sensor frame corrupt")
        return super().predict_proba(x)
