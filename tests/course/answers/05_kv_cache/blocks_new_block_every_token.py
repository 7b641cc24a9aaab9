from helpers.kv_cache import BLOCK_SIZE, BlockAllocator, DoubleFreeError, NoFreeBlocksError


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
        need = self.blocks_for(n_tokens)
        if need > self.allocator.n_free:
            raise NoFreeBlocksError(f"{seq!r} needs {need} blocks, {self.allocator.n_free} free")
        self.tables[seq] = [self.allocator.allocate() for _ in range(need)]
        self.lengths[seq] = n_tokens
        return self.tables[seq]

    def can_append(self, seq):
        full = self.lengths[seq] == len(self.tables[seq]) * self.block_size
        return not full or self.allocator.n_free > 0

    def append_slot(self, seq):
        position = self.lengths[seq]
        self.tables[seq].append(self.allocator.allocate())   # a block for every token
        self.lengths[seq] = position + 1
        return self.tables[seq][-1], 0

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
