"""Knowledge distillation: train a small network to imitate a large one.

A trained teacher's softmax carries more than its top answer: that a ``donut`` map
looks a little like ``edge-ring`` and nothing like ``scratch``. Hinton et al. (2015)
train the student on those *soft targets*, softened by a temperature ``T`` so the small
probabilities are visible, mixed with the ordinary hard-label loss:

    loss = alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross_entropy(student, labels)

The ``T**2`` keeps the soft term's gradients the same size whatever ``T`` is (they shrink
as ``1/T**2`` otherwise), so ``alpha`` means the same mix at every temperature.

Writing that loss is lesson 08's second exercise, so it is not here: ``train_student``
takes the loss as an argument, and the lesson passes the student's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["hard_label_loss", "train_student"]

DistillLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def hard_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """The baseline: the labels alone, the teacher ignored (training from scratch)."""
    return F.cross_entropy(student_logits, labels)


def train_student(student: nn.Module, teacher: nn.Module, maps: np.ndarray, labels: np.ndarray,
                  loss_fn: DistillLoss, epochs: int = 5,
                  time_budget_s: float | None = None, lr: float = 3e-3, batch_size: int = 64,
                  seed: int = 0, progress: bool = False,
                  label: str = "student") -> tuple[nn.Module, dict]:
    """Train ``student`` on ``maps`` with ``loss_fn(student_logits, teacher_logits, labels)``.

    The teacher's logits are computed once (it is frozen). Training stops after ``epochs``
    or when ``time_budget_s`` has passed at the end of an epoch, whichever is first;
    ``progress`` shows a bar of epochs named ``label``.
    Returns the student in eval mode and ``{"epochs", "seconds", "final_loss"}``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(maps, np.float32))
    y = torch.from_numpy(np.asarray(labels)).long()
    teacher.eval()
    with torch.inference_mode():
        teacher_logits = torch.cat([teacher(b) for b in x.split(256)])  # (N, K)
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start, done, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    student.train()
    for _ in tqdm(range(epochs), desc=label, unit="epoch", disable=not progress, leave=False):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss = loss_fn(student(x[idx]), teacher_logits[idx], y[idx])
            if loss.dim() != 0:
                raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
            loss.backward()
            optimiser.step()
        done += 1
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
    return student.eval(), {"epochs": done, "seconds": round(time.perf_counter() - start, 2),
                            "final_loss": round(loss.item(), 4)}
