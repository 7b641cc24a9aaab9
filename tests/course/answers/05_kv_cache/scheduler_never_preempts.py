from helpers.kv_cache import blocks_for
from helpers.scheduling import Decision


def my_schedule(waiting, running, *, free_blocks, block_size, max_running, watermark_blocks=0):
    by_age = sorted(running, key=lambda s: s.arrival)
    needs_block = lambda s: s.tokens % block_size == 0  # noqa: E731
    preempt = []
    free_blocks -= sum(map(needs_block, by_age))
    admit = []
    if not preempt:
        for candidate in waiting:
            need = blocks_for(candidate.tokens, block_size)
            if len(by_age) + len(admit) >= max_running or free_blocks - need < watermark_blocks:
                break
            admit.append(candidate.seq)
            free_blocks -= need
    return Decision(preempt=tuple(preempt), run=tuple(s.seq for s in by_age), admit=tuple(admit))
    ### END SOLUTION
