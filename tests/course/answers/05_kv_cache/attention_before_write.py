import torch
import torch.nn.functional as F


def my_attend(q, k, v, cache, layer, start):
    if cache is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    end = start + q.shape[2]
    keys = cache.keys[layer, :, :, :end].clone()      # read first ...
    values = cache.values[layer, :, :, :end].clone()
    cache.update(layer, start, k, v)                   # ... then write: the new keys are missing
    mask = torch.ones(q.shape[2], end, dtype=torch.bool, device=q.device).tril(start)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
