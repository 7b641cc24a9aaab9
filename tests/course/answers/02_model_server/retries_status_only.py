import random
import time


def post_with_retries(client, path, body, *, deadline_s=30.0, sleep=time.sleep,
                      clock=time.monotonic):
    # Retries 503 and 429 properly, but a refused connection escapes on the first try.
    give_up_at, retry = clock() + deadline_s, 0
    while True:
        response = client.post(path, json=body)
        if response.status_code not in (429, 503):
            return response
        asked = response.headers.get("retry-after")
        backoff = min(1.0, 0.05 * 2 ** retry)
        wait = float(asked) if asked else random.uniform(backoff / 2, backoff)
        if clock() + wait > give_up_at:
            return response
        sleep(wait)
        retry += 1
