import math

from helpers.kv_cache import BLOCK_SIZE, BlockAllocator, DoubleFreeError, NoFreeBlocksError


class MyBlockManager:
    def __init__(self, n_blocks, block_size=BLOCK_SIZE, watermark_blocks=0):
        self.allocator = BlockAllocator(n_blocks)
        self.block_size = block_size
        self.watermark_blocks = watermark_blocks
        self.tables = {}    # seq -> [block ids]
        self.lengths = {}   # seq -> tokens

    def blocks_for(self, n_tokens):
        return math.ceil(n_tokens / self.block_size)

    def can_allocate(self, n_tokens):
        return self.blocks_for(n_tokens) + self.watermark_blocks <= self.allocator.n_free

    def allocate(self, seq, n_tokens):
        taken = []
        try:
            for _ in range(self.blocks_for(n_tokens)):
                taken.append(self.allocator.allocate())
        except NoFreeBlocksError:
            for block in taken:   # roll back: all or nothing
                self.allocator.free(block)
            raise
        self.tables[seq], self.lengths[seq] = taken, n_tokens
        return taken

    def _room_in_last_block(self, seq):
        return len(self.tables[seq]) * self.block_size - self.lengths[seq]

    def can_append(self, seq):
        return self._room_in_last_block(seq) > 0 or self.allocator.n_free >= 1

    def append_slot(self, seq):
        if self._room_in_last_block(seq) == 0:
            self.tables[seq] = self.tables[seq] + [self.allocator.allocate()]
        self.lengths[seq] += 1
        block_index, offset = divmod(self.lengths[seq] - 1, self.block_size)
        return self.tables[seq][block_index], offset

    def free(self, seq):
        blocks = self.tables.pop(seq, None)
        if blocks is None:
            raise DoubleFreeError(f"{seq} has nothing to free")
        self.lengths.pop(seq)
        for block in reversed(blocks):
            self.allocator.free(block)

    @property
    def used_blocks(self):
        return sum(len(table) for table in self.tables.values())
