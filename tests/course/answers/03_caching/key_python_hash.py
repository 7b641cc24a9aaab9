def wafer_cache_key(model, version, inputs):
    # hash() of a tuple of str and bytes is salted per process (PYTHONHASHSEED).
    return format(hash((model, str(version), inputs.shape, inputs.tobytes())) & (2**64 - 1), "x")
