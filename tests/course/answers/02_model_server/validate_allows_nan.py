import numpy as np

from helpers import data


def validate_records(records):
    """Checks names and types, but lets NaN and infinity through to the model."""
    if not isinstance(records, list) or not records:
        raise ValueError("send a non-empty list of records")
    out = np.empty((len(records), len(data.FEATURES)), dtype=np.float32)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"record {i} is not an object of feature values")
        missing = [f for f in data.FEATURES if f not in record]
        unknown = sorted(set(record) - set(data.FEATURES))
        if missing or unknown:
            raise ValueError(f"record {i}: missing {missing}, unknown {unknown}")
        for j, name in enumerate(data.FEATURES):
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"record {i}: {name}={value!r} is not a number")
            out[i, j] = value
    return out
