"""What techniques that train or search receive: labelled examples and calibration inputs.

Post-training techniques take a plain calibration list. Techniques of the kinds qat,
mixed-precision, data-free and diffusion take one `TaskData`, so a technique states in
its code which of the task's data it touches (a data-free method must run with none).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Labelled:
    """Examples `x [N, ...]` and integer class labels `y [N]`."""
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise ValueError("data: Labelled needs tensors x and y")
        if self.x.shape[0] == 0 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"data: x and y must be non-empty and the same length, got {self.x.shape[0]} "
                             f"and {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, seed: int, device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled mini-batches; the order depends on `seed` only."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)
        for i in range(0, len(self), batch_size):
            idx = order[i:i + batch_size]
            yield self.x[idx].to(device), self.y[idx].to(device)


@dataclass
class TaskData:
    """Everything a task offers a technique; fields a technique may not use are None.

    train: labelled training examples (QAT, Hessian traces, learned bit-widths).
    calib: unlabelled calibration batches (model inputs), as post-training methods get them.
    loss:  loss(model_output, y) -> scalar, the task's training objective.
    extra: task-specific objects (e.g. the diffusion schedule), by name.
    """
    train: Labelled | None = None
    calib: list | None = None
    loss: Callable | None = None
    extra: dict | None = None

    def need(self, field: str, technique: str):
        """The named field, or a ValueError saying that `technique` cannot run without it."""
        value = getattr(self, field)
        if value is None or (isinstance(value, list) and not value):
            raise ValueError(f"data: {technique!r} needs {field} data, but the task provided none")
        return value
