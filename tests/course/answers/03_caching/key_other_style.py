import hashlib
import json


def wafer_cache_key(model, version, inputs):
    """JSON of the nested values (the nesting carries the shape), hashed with BLAKE2b."""
    payload = json.dumps({"model": model, "version": str(version), "values": inputs.tolist()})
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()
