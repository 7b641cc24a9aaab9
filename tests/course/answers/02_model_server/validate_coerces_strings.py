import numpy as np

from helpers import data


def validate_records(records):
    """Lenient: whatever float() accepts is a number, so "2.0" passes and "high" fails unnamed."""
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
        out[i] = [float(record[name]) for name in data.FEATURES]
    return out
