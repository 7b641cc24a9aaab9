import numbers

import numpy as np

from helpers import data


def _number(i, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"record {i}: {name} must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"record {i}: {name} must be finite, got {value!r}")
    return float(value)


def validate_records(records):
    """Plain-JSON wafer records -> (n, 8) float32 in data.FEATURES order, or ValueError."""
    if type(records) is not list or len(records) == 0:
        raise ValueError("expected a non-empty JSON list of records")
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"record {i} must be an object, got {type(record).__name__}")
        extra = set(record).difference(data.FEATURES)
        if extra:
            raise ValueError(f"record {i} has unknown fields {sorted(extra)}")
        absent = [name for name in data.FEATURES if name not in record]
        if absent:
            raise ValueError(f"record {i} lacks {absent}")
        rows.append([_number(i, name, record[name]) for name in data.FEATURES])
    return np.asarray(rows, dtype=np.float32)
