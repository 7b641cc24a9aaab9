import hashlib


def wafer_cache_key(model, version, inputs):
    # str() of an array is readable, and prints "..." once it holds over 1,000 numbers.
    return hashlib.sha256(f"{model}|{version}|{inputs}".encode()).hexdigest()
