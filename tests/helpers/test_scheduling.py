"""The generation scheduler's decision, as data: admission, growth, preemption, static."""

import random

from helpers.scheduling import SeqState, schedule

BS = 16


def seqs(*tokens, start=0):
    return [SeqState(f"s{start + i}", start + i, n) for i, n in enumerate(tokens)]


def test_the_queue_is_admitted_in_order_up_to_the_running_limit():
    decision = schedule(seqs(5, 5, 5, 5, 5), [], free_blocks=100, block_size=BS, max_running=3)
    assert decision.admit == ("s0", "s1", "s2") and decision.run == () == decision.preempt


def test_a_sequence_that_does_not_fit_is_not_overtaken():
    waiting = seqs(40, 10)  # 3 blocks, then 1
    decision = schedule(waiting, [], free_blocks=2, block_size=BS, max_running=8)
    assert decision.admit == () and decision.idle
    assert schedule(waiting, [], free_blocks=3, block_size=BS, max_running=8).admit == ("s0",)


def test_running_sequences_grow_a_block_only_when_their_last_is_full():
    running = seqs(16, 17, 31)  # only the first needs a new block
    decision = schedule([], running, free_blocks=1, block_size=BS, max_running=8)
    assert decision.run == ("s0", "s1", "s2") and decision.preempt == ()


def test_the_youngest_are_preempted_until_the_rest_can_grow_and_nobody_is_admitted():
    running = seqs(16, 32, 48)  # every one needs a block; one is free
    decision = schedule(seqs(1, start=10), running, free_blocks=1, block_size=BS,
                        max_running=8)
    assert decision.preempt == ("s2",) and decision.run == ("s0", "s1")
    assert decision.admit == ()
    # several, youngest first, when freeing one is not enough
    decision = schedule([], seqs(16, 16, 16), free_blocks=0, block_size=BS, max_running=8)
    assert decision.preempt == ("s2", "s1") and decision.run == ("s0",)


def test_the_watermark_is_kept_free_at_admission():
    waiting = seqs(64)  # 4 blocks
    assert schedule(waiting, [], free_blocks=4, block_size=BS, max_running=4,
                    watermark_blocks=1).admit == ()
    assert schedule(waiting, [], free_blocks=5, block_size=BS, max_running=4,
                    watermark_blocks=1).admit == ("s0",)


def test_static_batching_admits_only_into_an_empty_batch():
    waiting = seqs(5, 5, start=10)
    assert schedule(waiting, seqs(3), free_blocks=50, block_size=BS, max_running=4,
                    static=True).admit == ()
    assert schedule(waiting, seqs(3), free_blocks=50, block_size=BS, max_running=4).admit == \
        ("s10", "s11")
    assert schedule(waiting, [], free_blocks=50, block_size=BS, max_running=4,
                    static=True).admit == ("s10", "s11")


def test_random_states_keep_the_rules():
    rng = random.Random(0)
    for _ in range(2000):
        running = [SeqState(f"r{i}", rng.randrange(100), rng.randrange(1, 120))
                   for i in range(rng.randrange(0, 8))]
        waiting = [SeqState(f"w{i}", 100 + i, rng.randrange(1, 120))
                   for i in range(rng.randrange(0, 8))]
        free, limit = rng.randrange(0, 20), rng.randrange(1, 10)
        d = schedule(waiting, running, free_blocks=free, block_size=BS, max_running=limit)
        assert set(d.run) | set(d.preempt) == {s.seq for s in running}
        assert not set(d.run) & set(d.preempt)
        assert len(d.run) + len(d.admit) <= max(limit, len(d.run))
        assert d.admit == tuple(s.seq for s in waiting[:len(d.admit)])  # a prefix: FIFO
        by_arrival = {s.seq: s.arrival for s in running}
        if d.preempt and d.run:  # the preempted are younger than every one kept
            assert min(by_arrival[s] for s in d.preempt) >= max(by_arrival[s] for s in d.run)
        kept = [s for s in running if s.seq in d.run]
        growth = sum(s.tokens % BS == 0 for s in kept)
        freed = sum(-(-s.tokens // BS) for s in running if s.seq in d.preempt)
        admitted = sum(-(-s.tokens // BS) for s in waiting if s.seq in d.admit)
        assert growth + admitted <= free + freed  # never more blocks than there are
