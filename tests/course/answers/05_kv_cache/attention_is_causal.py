import torch.nn.functional as F


def my_attend(q, k, v, cache, layer, start):
    if cache is not None:
        k, v = cache.update(layer, start, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
