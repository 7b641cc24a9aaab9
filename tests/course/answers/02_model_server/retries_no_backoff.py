import time

import httpx


def post_with_retries(client, path, body, *, deadline_s=30.0, sleep=time.sleep,
                      clock=time.monotonic):
    # Retries the right things, at once: no wait between attempts.
    give_up_at = clock() + deadline_s
    while True:
        try:
            response = client.post(path, json=body)
            if response.status_code not in (429, 503) or clock() > give_up_at:
                return response
        except httpx.TransportError:
            if clock() > give_up_at:
                raise
