"""The digits data and the small CNN every training-time and data-free technique is measured on.

Data: scikit-learn's bundled digits (1797 real 8×8 handwritten digits, 16 grey levels),
split once, stratified, with a fixed seed: 1077 train, 180 calibration, 540 test. Pixels are
scaled to [0, 1] and standardised with the training mean/std.

Model: three 3×3 convolutions (16, 32, 32 channels), each followed by BatchNorm and ReLU,
a 2×2 max-pool after the second, global average pooling and a Linear classifier. Each
convolution is written as unfold + nn.Linear (`PatchConv`), so every technique that acts on
nn.Linear layers (GPTQ's Hessians, AdaRound, bias correction, ...) applies unchanged; it is
numerically the same function as nn.Conv2d. Trained with Adam on one thread (about 10 s);
the weights every result is measured on are shipped in refimpl/bench/weights/ with a pinned
sha256, because a model trained on another CPU differs in its last bits (and in a test digit or
two). Retrain with `python -m refimpl.bench.train digits-cnn`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.data import Labelled

VERSION = "1"   # bump when the split, the model or the training recipe changes (invalidates the cache)
WEIGHTS_FILE = f"digits-cnn-v{VERSION}.pt"   # shipped in refimpl/bench/weights/, sha256 in its MANIFEST.json
SPLIT_SEED = 0
N_CALIB, N_TEST = 180, 540


class PatchConv(nn.Module):
    """A k×k convolution (stride 1, 'same' padding) computed as unfold followed by nn.Linear.

    The Linear's weight is the conv kernel flattened to [out, in·k·k]; its inputs are the
    image patches, one row per output pixel.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 3):
        super().__init__()
        self.k = k
        self.linear = nn.Linear(c_in * k * k, c_out)

    def forward(self, x):
        n, _, h, w = x.shape
        patches = F.unfold(x, self.k, padding=self.k // 2).transpose(1, 2)   # [n, h·w, c_in·k·k]
        y = self.linear(patches)                                              # [n, h·w, c_out]
        return y.transpose(1, 2).reshape(n, -1, h, w)


class DigitsCNN(nn.Module):
    # the first layer's input is the image itself: activation quantizers skip it
    act_quant_skip = ("conv1",)

    def __init__(self, width: tuple[int, int, int] = (16, 32, 32), classes: int = 10):
        super().__init__()
        c1, c2, c3 = width
        self.conv1, self.bn1 = PatchConv(1, c1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = PatchConv(c1, c2), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = PatchConv(c2, c3), nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, classes)

    def features(self, x):
        """The pooled penultimate features [n, c3] (used for Fréchet distances of generated digits)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def load_split() -> dict[str, Labelled]:
    """{'train', 'calib', 'test'}: standardised images [n, 1, 8, 8] (float32) and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    X = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx = list(range(len(y)))
    rest, test = train_test_split(idx, test_size=N_TEST, stratify=digits.target, random_state=SPLIT_SEED)
    train, calib = train_test_split(rest, test_size=N_CALIB, stratify=digits.target[rest], random_state=SPLIT_SEED)
    mean, std = X[train].mean(), X[train].std()
    norm = lambda ids: Labelled((X[sorted(ids)] - mean) / std, y[sorted(ids)])  # noqa: E731
    return {"train": norm(train), "calib": norm(calib), "test": norm(test)}


def normalisation() -> tuple[float, float]:
    """(mean, std) used to standardise pixels in [0, 1]; generators of images need them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    X = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    rest, _ = train_test_split(list(range(len(X))), test_size=N_TEST, stratify=digits.target, random_state=SPLIT_SEED)
    train, _ = train_test_split(rest, test_size=N_CALIB, stratify=digits.target[rest], random_state=SPLIT_SEED)
    return X[train].mean().item(), X[train].std().item()


def train_fp(seed: int = 0, epochs: int = 40, lr: float = 3e-3) -> DigitsCNN:
    """Train the fp32 model from scratch, deterministically (BatchNorm in train mode)."""
    split = load_split()
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        model.train()
        for x, y in split["train"].batches(64, seed * 1000 + epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def load_model() -> DigitsCNN:
    """The trained fp32 model: the shipped weights, checked against their pinned sha256."""
    from refimpl.bench.models import load_pinned
    return load_pinned(WEIGHTS_FILE, DigitsCNN)


@torch.no_grad()
def correct(model: nn.Module, data: Labelled, batch_size: int = 256) -> torch.Tensor:
    """1/0 per example: whether the model's top-1 class is the label (what accuracy averages)."""
    device = next(model.parameters()).device
    hits = [model(data.x[i:i + batch_size].to(device)).argmax(-1).cpu() == data.y[i:i + batch_size]
            for i in range(0, len(data), batch_size)]
    return torch.cat(hits).to(torch.int64)


def accuracy(model: nn.Module, data: Labelled, batch_size: int = 256) -> float:
    return correct(model, data, batch_size).sum().item() / len(data)
