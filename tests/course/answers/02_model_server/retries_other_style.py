import random
import time

import httpx


def backoffs(cap=1.0, first=0.05):
    """Jittered, capped exponential backoff, one wait per retry."""
    ceiling = first
    while True:
        yield ceiling * (0.5 + 0.5 * random.random())
        ceiling = min(cap, ceiling * 2)


def post_with_retries(client, path, body, *, deadline_s=30.0, sleep=time.sleep,
                      clock=time.monotonic):
    end = clock() + deadline_s
    last_response = last_error = None
    for backoff in backoffs():
        try:
            last_response, last_error = client.post(path, json=body), None
        except httpx.TransportError as exc:
            last_response, last_error = None, exc
        if last_response is not None and last_response.status_code not in (429, 503):
            return last_response
        asked = last_response.headers.get("Retry-After") if last_response is not None else None
        wait = float(asked) if asked and asked.replace(".", "", 1).isdigit() else backoff
        if clock() + wait > end:
            break
        sleep(wait)
    if last_error is not None:
        raise last_error
    return last_response
