"""A small CNN trained here, in seconds, on scikit-learn's 8x8 digits.

It is the one model edgefold builds itself: real data, real training, small enough to
train on every fresh cache, and it has the ops compression passes care about (conv +
BatchNorm to fold, ReLU, pooling, a linear head). Training is deterministic: fixed seed,
a private RNG for shuffling, one intra-op thread while it runs.
"""

from __future__ import annotations

import contextlib

import numpy as np

INPUT_SHAPE = (1, 1, 8, 8)
NUM_CLASSES = 10


def build_digits_cnn():
    """A fresh, untrained digits CNN (two conv+BatchNorm+ReLU, max-pool, linear head over 10 classes)."""
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.classifier = nn.Linear(32 * 4 * 4, NUM_CLASSES)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.features(image), 1))

    return DigitsCNN()


@contextlib.contextmanager
def _single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_digits_cnn(seed: int = 0, epochs: int = 12, batch_size: int = 32, lr: float = 3e-3):
    """Train on the fixed digits train split; returns the module in eval mode."""
    import torch
    from torch import nn

    from edgefold.datasets import digits_split

    x_train, y_train, _, _ = digits_split(seed)
    x = torch.from_numpy(np.array(x_train))
    y = torch.from_numpy(np.array(y_train))
    with _single_thread():
        torch.manual_seed(seed)
        model = build_digits_cnn()
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * ((len(x) + batch_size - 1) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()
