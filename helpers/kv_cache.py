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

__all__ = ["KVCache", "bytes_per_token", "BLOCK_SIZE", "blocks_for", "BlockAllocator",
           "BlockManager", "NoFreeBlocksError", "DoubleFreeError", "PagedKVPool",
           "PagedSequence", "PagedBatch", "blocks_for_memory"]


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


# -- paged blocks -----------------------------------------------------------------------
# A contiguous reservation holds max_len tokens per sequence from its first token on; most
# sequences stop far shorter, and the rest of their reservation is memory no one can use.
# vLLM's answer is paging: the cache is a pool of fixed-size blocks (16 tokens), and each
# sequence owns a *block table* — the list of blocks its tokens live in, in order. A
# sequence takes a new block only when its last one is full, so at most one block per
# sequence is partly empty. The allocator below hands out blocks; the manager keeps each
# sequence's table and answers the scheduler's questions (can this one start? can every
# running one take one more token?). Pure bookkeeping: no tensors, so it is tested alone.

BLOCK_SIZE = 16


def blocks_for(n_tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """Blocks that hold ``n_tokens``: 16 tokens need 1 block, 17 need 2."""
    return -(-n_tokens // block_size)


def blocks_for_memory(free_bytes: int, bytes_per_block: int, fraction: float,
                      most_useful: int) -> int:
    """How many blocks a pool takes: ``fraction`` of the device's free memory, as vLLM sizes
    its pool (``gpu_memory_utilization``), but no more than ``most_useful`` — blocks past
    what the running sequences can ever fill are memory taken from everyone else.

    >>> blocks_for_memory(free_bytes=8 << 30, bytes_per_block=65536, fraction=0.5,
    ...                   most_useful=129)
    129
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    fits = int(free_bytes * fraction) // bytes_per_block
    if fits < 1:
        raise ValueError(f"{free_bytes} free bytes x {fraction} hold no block of "
                         f"{bytes_per_block} bytes")
    return min(fits, most_useful)


class NoFreeBlocksError(RuntimeError):
    """The pool has no free block: the scheduler should have asked first."""


class DoubleFreeError(RuntimeError):
    """A block was freed more often than it was taken: a bookkeeping bug, never ignored."""


class BlockAllocator:
    """``n_blocks`` block ids, a free list and a reference count per block.

    A block may be shared (``fork``: two sequences with the same prefix); it returns to the
    free list when its last holder frees it.
    """

    def __init__(self, n_blocks: int) -> None:
        if n_blocks < 1:
            raise ValueError(f"a pool needs at least one block, got {n_blocks}")
        self.n_blocks = n_blocks
        self._free = list(range(n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self._refs = [0] * n_blocks

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise NoFreeBlocksError(f"all {self.n_blocks} blocks are in use")
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def fork(self, block: int) -> int:
        """One more holder of an allocated block."""
        if self._refs[block] == 0:
            raise DoubleFreeError(f"block {block} is free: there is nothing to share")
        self._refs[block] += 1
        return block

    def free(self, block: int) -> None:
        if self._refs[block] == 0:
            raise DoubleFreeError(f"block {block} is already free")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)

    def refs(self, block: int) -> int:
        return self._refs[block]


class BlockManager:
    """Block tables of the running sequences, over one ``BlockAllocator``.

    The scheduler asks ``can_allocate`` before it admits a sequence (its prompt's blocks),
    ``can_append`` before each decode step, and ``free`` when a sequence ends, is
    preempted or its client leaves. ``watermark_blocks`` stay free at admission, so running
    sequences can still grow (vLLM keeps such a watermark too).
    """

    def __init__(self, n_blocks: int, block_size: int = BLOCK_SIZE,
                 watermark_blocks: int = 0) -> None:
        self.allocator = BlockAllocator(n_blocks)
        self.block_size = block_size
        self.watermark_blocks = watermark_blocks
        self.tables: dict[object, list[int]] = {}
        self.lengths: dict[object, int] = {}

    def blocks_for(self, n_tokens: int) -> int:
        return blocks_for(n_tokens, self.block_size)

    def can_allocate(self, n_tokens: int) -> bool:
        return self.allocator.n_free - self.blocks_for(n_tokens) >= self.watermark_blocks

    def allocate(self, seq: object, n_tokens: int) -> list[int]:
        """Blocks for a new sequence's first ``n_tokens``: all of them, or none."""
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already holds blocks")
        needed = self.blocks_for(n_tokens)
        if self.allocator.n_free < needed:
            raise NoFreeBlocksError(f"{needed} blocks needed, {self.allocator.n_free} free")
        self.tables[seq] = [self.allocator.allocate() for _ in range(needed)]
        self.lengths[seq] = n_tokens
        return self.tables[seq]

    def can_append(self, seq: object) -> bool:
        """Can ``seq`` take one more token (a free block, if its last one is full)?"""
        full = self.lengths[seq] == len(self.tables[seq]) * self.block_size
        return not full or self.allocator.n_free > 0

    def append_slot(self, seq: object) -> tuple[int, int]:
        """Room for one more token of ``seq``: its (block, offset in the block)."""
        position = self.lengths[seq]
        if position == len(self.tables[seq]) * self.block_size:
            self.tables[seq].append(self.allocator.allocate())
        self.lengths[seq] = position + 1
        return self.tables[seq][position // self.block_size], position % self.block_size

    def free(self, seq: object) -> None:
        """Give back every block of ``seq`` (finished, preempted, or its client left)."""
        if seq not in self.tables:
            raise DoubleFreeError(f"sequence {seq!r} holds no blocks: freed twice, or never "
                                  "allocated")
        for block in self.tables.pop(seq):
            self.allocator.free(block)
        del self.lengths[seq]

    @property
    def used_blocks(self) -> int:
        return self.allocator.n_blocks - self.allocator.n_free

    def waste(self) -> float:
        """The share of allocated token slots that hold no token (partly filled last blocks)."""
        slots = sum(len(table) for table in self.tables.values()) * self.block_size
        return 1 - sum(self.lengths.values()) / slots if slots else 0.0


class PagedKVPool:
    """The paged cache's tensors: K and V of ``n_blocks`` blocks of ``block_size`` tokens,
    shared by every sequence through one ``BlockManager``.

    Stored ``(layers, blocks × block_size, heads, head_dim)``: token slot ``block ×
    block_size + offset`` is one row, so writing and gathering a sequence's tokens is one
    ``index_copy_`` / ``index_select`` of rows per layer.
    """

    def __init__(self, n_layer: int, n_blocks: int, n_head: int, head_dim: int,
                 block_size: int = BLOCK_SIZE, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", watermark_blocks: int = 0,
                 manager: BlockManager | None = None) -> None:
        """``manager``: any object with ``BlockManager``'s methods (yours, in lesson 05)."""
        shape = (n_layer, n_blocks * block_size, n_head, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.manager = manager or BlockManager(n_blocks, block_size, watermark_blocks)

    def sequence(self, seq: object) -> PagedSequence:
        return PagedSequence(self, seq)

    def slots(self, seq: object, end: int) -> torch.Tensor:
        """The slot rows of positions ``0..end`` of ``seq``, by its block table."""
        size = self.manager.block_size
        table = torch.tensor(self.manager.tables[seq], device=self.keys.device)
        where = torch.arange(end, device=self.keys.device)
        return table[where // size] * size + where % size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """``k``/``v``: ``(N, H, D)``, one row per slot."""
        self.keys[layer].index_copy_(0, slots, k)
        self.values[layer].index_copy_(0, slots, v)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at ``slots`` (any shape S), as ``(*S, H, D)``."""
        flat = slots.reshape(-1)
        keys = self.keys[layer].index_select(0, flat)
        values = self.values[layer].index_select(0, flat)
        return keys.view(*slots.shape, *keys.shape[1:]), values.view(*slots.shape, *keys.shape[1:])


class PagedSequence:
    """One sequence's cache in a ``PagedKVPool``, with ``KVCache``'s ``update`` (batch 1).

    Writing position ``p`` goes to block ``table[p // block_size]`` at offset
    ``p % block_size``; reading gathers the sequence's positions back, block by block, in
    order — the attention sees the same keys a contiguous cache holds.
    """

    def __init__(self, pool: PagedKVPool, seq: object) -> None:
        self.pool, self.seq = pool, seq

    @property
    def length(self) -> int:
        return self.pool.manager.lengths.get(self.seq, 0)

    def update(self, layer: int, start: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[0] != 1:
            raise ValueError(f"a paged sequence holds one sequence, got a batch of {k.shape[0]}")
        end = start + k.shape[2]
        manager = self.pool.manager
        if layer == 0:  # the first layer of a step reserves and indexes its slots, once
            if self.seq not in manager.tables:
                manager.allocate(self.seq, end)
            else:
                if start != manager.lengths[self.seq]:
                    raise ValueError(f"writing at {start}, but {manager.lengths[self.seq]} "
                                     "tokens are cached: a paged sequence only grows")
                for _ in range(end - start):
                    manager.append_slot(self.seq)
            self._slots = self.pool.slots(self.seq, end)  # every position, the new ones last
        self.pool.write(layer, self._slots[start:], k[0].transpose(0, 1),
                        v[0].transpose(0, 1))  # (T, H, D)
        keys, values = self.pool.gather(layer, self._slots)
        return keys.transpose(0, 1)[None], values.transpose(0, 1)[None]  # (1, H, end, D)

    def free(self) -> None:
        self.pool.manager.free(self.seq)


class PagedBatch:
    """One decode step of several sequences in a ``PagedKVPool``: each writes one token at
    its own position (its cached length) and attends over its own blocks.

    The rows have different lengths, so the gathered keys are padded to the longest and
    ``mask`` (``(B, 1, 1, L)``) hides each row's padding; ``positions`` (``(B, 1)``) tells
    the attention where each row's new token sits, for its rotary angle.
    """

    def __init__(self, pool: PagedKVPool, seqs: list) -> None:
        self.pool, self.seqs = pool, list(seqs)
        lengths = [pool.manager.lengths[s] for s in self.seqs]
        device = pool.keys.device
        self.positions = torch.tensor(lengths, device=device)[:, None]
        self._lengths = self.positions[:, 0] + 1  # after this step's token
        self.mask = (torch.arange(int(self._lengths.max()), device=device)[None]
                     < self._lengths[:, None])[:, None, None, :]

    def update(self, layer: int, start: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        manager, size = self.pool.manager, self.pool.manager.block_size
        if layer == 0:  # reserve this step's slot of every row, once, and index them all
            for seq in self.seqs:
                manager.append_slot(seq)
            longest = max(len(manager.tables[s]) for s in self.seqs)
            tables = torch.tensor([manager.tables[s] + [0] * (longest - len(manager.tables[s]))
                                   for s in self.seqs], device=self.pool.keys.device)
            where = torch.arange(self.mask.shape[-1], device=tables.device)
            # every row's slots 0..L (the padding reads slot rows of block 0, masked)
            self._slots = tables[:, where // size] * size + where % size  # (B, L)
            self._new = self._slots.gather(1, self.positions)[:, 0]  # (B,)
        self.pool.write(layer, self._new, k[:, :, 0], v[:, :, 0])  # (B, H, D)
        keys, values = self.pool.gather(layer, self._slots)  # (B, L, H, D)
        return keys.transpose(1, 2), values.transpose(1, 2)  # (B, H, L, D)
