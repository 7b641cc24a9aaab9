import os

import pytest

# Tests run the quick profile unless a test says otherwise.
os.environ.setdefault("COURSE_PROFILE", "quick")
# Headless plotting.
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
