"""Paged KV blocks: the allocator's free list and reference counts, the manager's tables."""

import copy

import pytest
import torch

from helpers.gpt import ToolLogGPT, ToolLogTokenizer
from helpers.kv_cache import (
    BlockAllocator,
    BlockManager,
    DoubleFreeError,
    NoFreeBlocksError,
    bytes_per_token,
)


def test_blocks_come_back_when_their_last_holder_frees_them():
    pool = BlockAllocator(3)
    a, b = pool.allocate(), pool.allocate()
    assert (a, b) == (0, 1) and pool.n_free == 1
    pool.fork(a)
    pool.free(a)
    assert pool.n_free == 1 and pool.refs(a) == 1  # still held by the fork
    pool.free(a)
    assert pool.n_free == 2 and pool.refs(a) == 0
    with pytest.raises(DoubleFreeError, match="block 0 is already free"):
        pool.free(a)
    with pytest.raises(DoubleFreeError):
        pool.fork(a)
    pool.allocate(), pool.allocate()
    with pytest.raises(NoFreeBlocksError):
        pool.allocate()


def test_sixteen_tokens_need_one_block_and_seventeen_two():
    manager = BlockManager(n_blocks=8)
    assert [manager.blocks_for(n) for n in (1, 16, 17, 32, 33)] == [1, 1, 2, 2, 3]
    assert len(manager.allocate("a", 16)) == 1 and len(manager.allocate("b", 17)) == 2
    assert manager.used_blocks == 3


def test_a_failed_allocation_takes_nothing():
    manager = BlockManager(n_blocks=4)
    manager.allocate("a", 40)  # 3 blocks
    assert not manager.can_allocate(17)
    with pytest.raises(NoFreeBlocksError):
        manager.allocate("b", 17)  # 2 needed, 1 free
    assert manager.allocator.n_free == 1 and "b" not in manager.tables
    with pytest.raises(ValueError, match="already holds"):
        manager.allocate("a", 1)


def test_appending_takes_a_block_only_when_the_last_is_full():
    manager = BlockManager(n_blocks=3)
    manager.allocate("a", 15)
    assert manager.append_slot("a") == (0, 15)  # fills block 0
    assert manager.can_append("a")
    assert manager.append_slot("a") == (1, 0) and manager.tables["a"] == [0, 1]
    manager.allocate("b", 16)  # the last block
    assert not manager.can_append("b")  # full, and no block is free
    assert manager.can_append("a")  # room left in its own block
    manager.free("a")
    assert manager.can_append("b")
    block, offset = manager.append_slot("b")
    assert offset == 0 and manager.tables["b"] == [2, block] and block in (0, 1)
    manager.free("b")
    assert manager.allocator.n_free == 3 and manager.tables == {} and manager.lengths == {}


def test_the_watermark_keeps_room_for_running_sequences_to_grow():
    manager = BlockManager(n_blocks=4, watermark_blocks=1)
    assert manager.can_allocate(48) and not manager.can_allocate(49)


def test_waste_is_only_the_partly_filled_last_blocks():
    manager = BlockManager(n_blocks=16)
    manager.allocate("a", 17)  # 2 blocks, 32 slots, 17 tokens
    manager.allocate("b", 32)  # 2 full blocks
    assert manager.waste() == pytest.approx(1 - 49 / 64)
    assert BlockManager(n_blocks=2).waste() == 0.0


def test_a_paged_sequence_generates_what_the_contiguous_cache_does():
    import torch

    from helpers.gpt import ToolLogGPT, ToolLogTokenizer, generate
    from helpers.kv_cache import PagedKVPool

    torch.manual_seed(0)
    model = ToolLogGPT(ToolLogTokenizer().vocab_size).eval()
    c = model.config
    pool = PagedKVPool(c.n_layer, n_blocks=12, n_head=c.n_head, head_dim=c.head_dim)
    prompt = torch.randint(0, c.vocab_size, (1, 21), generator=torch.Generator().manual_seed(3))
    expected = generate(model, prompt, 60)
    others = pool.sequence("other")
    with torch.inference_mode():
        model(prompt[:, :5], others)  # another sequence's blocks sit between ours
        paged = pool.sequence("ours")
        ids = prompt
        logits = model(ids, paged)[:, -1]
        for step in range(60):
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            if step < 59:  # the last token needs no step: nothing comes after it
                logits = model(ids[:, -1:], paged, start=ids.shape[1] - 1)[:, -1]
    assert torch.equal(ids, expected)
    assert paged.length == 80 and len(pool.manager.tables["ours"]) == 5  # 80 tokens, 5 blocks
    assert pool.manager.waste() < 0.2
    paged.free()
    others.free()
    assert pool.manager.allocator.n_free == 12
    with pytest.raises(ValueError, match="only grows"):
        with torch.inference_mode():
            seq = pool.sequence("again")
            model(prompt[:, :4], seq)
            model(prompt[:, :1], seq, start=2)


def test_a_pool_takes_a_share_of_free_memory_but_no_more_than_it_can_use():
    from helpers.kv_cache import blocks_for_memory

    assert blocks_for_memory(1 << 20, 65536, 0.5, most_useful=1000) == 8  # memory decides
    assert blocks_for_memory(8 << 30, 65536, 0.9, most_useful=129) == 129  # use decides
    with pytest.raises(ValueError, match="hold no block"):
        blocks_for_memory(1000, 65536, 0.9, most_useful=129)
    with pytest.raises(ValueError, match="fraction"):
        blocks_for_memory(1 << 30, 65536, 1.5, most_useful=129)


@pytest.fixture(scope="module")
def model():
    return ToolLogGPT(ToolLogTokenizer().vocab_size).eval()


def test_a_server_pool_holds_its_running_sequences_at_full_context(model):
    from helpers.generation_service import pool_blocks

    assert pool_blocks(model, max_running=8) == 8 * 16 + 1  # context 256: 16 blocks each


@pytest.mark.cuda
def test_on_a_gpu_the_pool_is_sized_from_free_memory(model):
    from helpers.generation_service import pool_blocks

    on_gpu = copy.deepcopy(model).to("cuda")
    free, _ = torch.cuda.mem_get_info()
    per_block = 16 * bytes_per_token(4, 4, 32)
    assert pool_blocks(on_gpu, max_running=8) == min(8 * 16 + 1, int(free * 0.5) // per_block)
    assert pool_blocks(on_gpu, max_running=10**6) <= int(free * 0.5) // per_block
