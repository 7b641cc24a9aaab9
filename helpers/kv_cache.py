"""The KV cache: keys and values a decoder has computed, kept so each new token costs one step.

Without a cache, generating token t recomputes attention's keys and values for all t
tokens before it: the work per token grows with the text, and a whole answer costs
O(n²). With a cache, each step computes K and V for the new token only, writes them
after the ones already there, and attends over the lot.

``KVCache`` is the contiguous kind: one tensor per K and V, ``(layers, batch, heads,
max_len, head_dim)``, reserved up front for the longest text a sequence may reach. Its
memory is the formula every serving engine sizes itself by:

    bytes per token = 2 (K and V) × layers × heads × head_dim × bytes per number

and a reservation for ``max_len`` tokens holds that much per sequence whether or not the
sequence ever gets there — the waste paged blocks (vLLM) avoid.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache", "bytes_per_token"]


def bytes_per_token(n_layer: int, n_head: int, head_dim: int,
                    dtype: torch.dtype = torch.float32) -> int:
    """K and V of one token, in every layer and head."""
    return 2 * n_layer * n_head * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """Contiguous K/V storage for ``batch`` sequences of up to ``max_len`` tokens."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # tokens written so far (the same for every sequence of the batch)

    def update(self, layer: int, start: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (``(B, H, T, D)``) at positions ``start..start+T`` of ``layer``;
        return every key and value up to there, ``(B, H, start+T, D)``."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; writing up to {end}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        if layer == self.keys.shape[0] - 1:
            self.length = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    @property
    def nbytes(self) -> int:
        """What the reservation holds, used or not."""
        return self.keys.nbytes + self.values.nbytes

    def used_bytes(self) -> int:
        """What the tokens written so far need."""
        return self.nbytes * self.length // self.max_len
