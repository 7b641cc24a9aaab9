import math

import torch
import torch.nn.functional as F


def my_attend(q, k, v, cache, layer, start):
    # Written out by hand: scores, a mask by absolute positions, softmax, weighted sum.
    if cache is not None:
        k, v = cache.update(layer, start, k, v)
    query_pos = torch.arange(start, start + q.shape[2], device=q.device)[:, None]
    key_pos = torch.arange(k.shape[2], device=q.device)[None, :]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return F.softmax(scores, dim=-1) @ v
