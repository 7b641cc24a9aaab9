"""Iteration-level scheduling for generation: who runs the next step, decided as data.

A generation server steps its model one token at a time for every running sequence.
Between two steps it may change *who* runs — Orca's **iteration-level** scheduling, which
vLLM and TGI call continuous batching: a sequence that finished leaves at once, and a
waiting one joins at once, instead of the whole batch waiting for its longest member
(**static** batching). What limits who can run is the KV cache: every running sequence
holds blocks (``helpers.kv_cache.BlockManager``), and must get a new one whenever its last
block fills.

``schedule`` is the decision alone, a pure function of plain numbers, in the manner of
vLLM's scheduler:

1. **Running sequences grow first.** Each needs a new block when its length is a multiple
   of the block size. If the free blocks cannot cover all of them, the **youngest**
   (latest arrival) running sequences are **preempted** — their blocks freed, their
   tokens kept — until the rest fit. The caller puts a preempted sequence back at the
   front of the queue, and recomputes its cache when it returns (vLLM's "recompute"
   preemption). A step that preempts admits nobody.
2. **Then the queue is admitted in order**, while there is a free running slot and the
   sequence's blocks (its prompt, plus what it had generated if it was preempted) fit
   above the watermark. The first one that does not fit stops admission: nobody overtakes
   it, so a long prompt is not starved by short ones.

``tokens`` counts the tokens whose keys and values a sequence has cached.

``static=True`` is the policy continuous batching replaces: admit only into an empty
batch, and let the batch run until its last sequence ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .kv_cache import blocks_for

__all__ = ["SeqState", "Decision", "schedule"]


@dataclass(frozen=True)
class SeqState:
    """What the scheduler knows of a sequence: its id, arrival order and tokens so far
    (prompt plus generated), and whether it holds blocks now."""

    seq: object
    arrival: int
    tokens: int


@dataclass(frozen=True)
class Decision:
    preempt: tuple = ()  # running sequences whose blocks are freed; they wait again
    run: tuple = ()      # running sequences that decode one token this step
    admit: tuple = ()    # waiting sequences that are prefilled this step

    @property
    def idle(self) -> bool:
        return not (self.run or self.admit)


def schedule(waiting: Sequence[SeqState], running: Sequence[SeqState], *, free_blocks: int,
             block_size: int, max_running: int, watermark_blocks: int = 0,
             static: bool = False) -> Decision:
    """The next step's decision. ``waiting`` in queue order, ``running`` in any order."""
    # 1. grow what runs; preempt the youngest while the growth does not fit
    keep = sorted(running, key=lambda s: s.arrival)
    preempted: list[SeqState] = []
    while keep and sum(s.tokens % block_size == 0 for s in keep) > free_blocks:
        youngest = keep.pop()
        preempted.append(youngest)
        free_blocks += blocks_for(youngest.tokens, block_size)
    free_blocks -= sum(s.tokens % block_size == 0 for s in keep)

    # 2. admit in queue order — not in a step that had to preempt: memory is short, and
    # what was just freed must not go to a newcomer ahead of the preempted
    admitted = []
    if not preempted and not (static and keep):
        for candidate in waiting:
            # its prompt, and what it had generated if it was preempted
            need = blocks_for(candidate.tokens, block_size)
            if len(keep) + len(admitted) >= max_running or \
                    free_blocks - need < watermark_blocks:
                break
            admitted.append(candidate)
            free_blocks -= need
    return Decision(preempt=tuple(s.seq for s in preempted),
                    run=tuple(s.seq for s in keep),
                    admit=tuple(s.seq for s in admitted))
