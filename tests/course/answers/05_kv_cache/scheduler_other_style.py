from helpers.kv_cache import blocks_for
from helpers.scheduling import Decision


def my_schedule(waiting, running, *, free_blocks, block_size, max_running, watermark_blocks=0):
    def growth(seqs):
        return sum(1 for s in seqs if s.tokens % block_size == 0)

    # youngest last; pop youngest until the rest can grow
    keep = sorted(running, key=lambda s: -s.arrival)
    evicted = []
    while keep and growth(keep) > free_blocks:
        victim, keep = keep[0], keep[1:]
        evicted.append(victim.seq)
        free_blocks += blocks_for(victim.tokens, block_size)
    free_blocks -= growth(keep)
    joining = []
    slots = max_running - len(keep)
    queue = list(waiting) if not evicted else []
    while queue and len(joining) < slots:
        head = queue.pop(0)
        cost = blocks_for(head.tokens, block_size)
        if free_blocks - cost < watermark_blocks:
            break
        free_blocks -= cost
        joining.append(head.seq)
    return Decision(tuple(evicted), tuple(s.seq for s in keep), tuple(joining))
