"""ZAQ: a generator searches for inputs where the quantized model disagrees with the full-precision one.

Paper: Liu, Zhang, Wang, "Zero-shot Adversarial Quantization" (arXiv 2103.15263, CVPR 2021).
Taxonomy: 3.5.3 Adversarial-based generation.

With no data, a small generator G turns noise z into inputs, and two players compete:

    G:  max_G  D(T(G(z)), S(G(z))) − λ·L_BN(G(z))       (find inputs the student gets wrong)
    S:  min_S  D(T(G(z)), S(G(z)))                      (fix them by quantization-aware training)

T is the full-precision teacher, S the quantized student (straight-through fake quantization,
initialised by round-to-nearest), D the mean absolute difference of their logits. The
BN-statistics prior L_BN (ZeroQ's Σ‖μ_l − μ_l^BN‖² + ‖σ_l − σ_l^BN‖² on the teacher) keeps the
samples near the data the teacher was trained on; without it the generator wins by drifting
to inputs no digit resembles. The student's activation ranges are calibrated on the
generator's samples once the prior has shaped them (a short warm-up of G on L_BN alone).

Both players step on the same batch: one backward pass of λ·L_BN − D gives G its gradient and,
negated, the student its gradient of D (simultaneous rather than alternating updates).
Simplified: the paper's discrepancy also compares intermediate feature maps (and its
generator is a convolutional GAN generator); here D is on the logits and G is a two-layer MLP.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from refimpl.core.fakequant import calibrate, freeze, prepare
from refimpl.core.registry import Claim, Deviation, register
from refimpl.data_free.zeroq import batchnorms, bn_statistics_loss, check_positive, check_seed, image_shape


class Generator(nn.Module):
    """z [n, z_dim] → images [n, c, h, w]: Linear → ReLU → Linear."""

    def __init__(self, shape: tuple[int, int, int], z_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.shape, self.z_dim = shape, z_dim
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, shape[0] * shape[1] * shape[2]))

    def forward(self, z):
        return self.net(z).reshape(-1, *self.shape)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        p = next(self.parameters())
        return self(torch.randn(n, self.z_dim, generator=generator).to(p))


def discrepancy(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """D = mean |T(x) − S(x)| over examples and classes."""
    return (t_logits - s_logits).abs().mean()


def adversarial_game(teacher: nn.Module, student: nn.Module, G: Generator, *, steps: int, batch: int,
                     lr_g: float, lr_s: float, lam: float, warmup: int, seed: int) -> dict[str, list[float]]:
    """Warm G up on the BN prior, calibrate the student's activations on G's samples, then play
    `steps` rounds. Returns the BN loss and the discrepancy per step."""
    g = torch.Generator().manual_seed(seed)
    bns = batchnorms(teacher, "zaq")
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.eval().requires_grad_(False)
    student.eval()    # BN statistics frozen; its affine parameters still train
    try:
        return _play(teacher, student, G, bns, g, steps=steps, batch=batch, lr_g=lr_g, lr_s=lr_s, lam=lam,
                     warmup=warmup)
    finally:
        for p, f in zip(teacher.parameters(), flags):
            p.requires_grad_(f)


def _play(teacher, student, G, bns, g, *, steps, batch, lr_g, lr_s, lam, warmup) -> dict[str, list[float]]:
    """The game of `adversarial_game`, with the teacher already frozen."""
    s_params = [p for p in student.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g)
    # a student with every parameter frozen only serves as the generator's opponent
    opt_s = torch.optim.Adam(s_params, lr=lr_s) if s_params else None
    hist = {"bn": [], "d": []}
    with torch.enable_grad():
        for _ in range(warmup):
            bn, _ = bn_statistics_loss(teacher, G.sample(batch, g), bns)
            opt_g.zero_grad(set_to_none=True)
            bn.backward()
            opt_g.step()
            hist["bn"].append(bn.item())
        with torch.no_grad():
            calibrate(student, [G.sample(batch, g) for _ in range(4)])
        for _ in range(steps):
            x = G.sample(batch, g)
            bn, t = bn_statistics_loss(teacher, x, bns)
            d = discrepancy(t, student(x))
            opt_g.zero_grad(set_to_none=True)
            student.zero_grad(set_to_none=True)
            # one backward serves both players: G descends λ·L_BN − D; the student descends D,
            # whose gradient w.r.t. its own parameters is the negative of what arrived there
            (lam * bn - d).backward()
            for p in s_params:
                if p.grad is not None:
                    p.grad.neg_()
            opt_g.step()
            if opt_s is not None:
                opt_s.step()
            hist["bn"].append(bn.item())
            hist["d"].append(d.item())
    return hist


@register(id="zaq", name="ZAQ — zero-shot adversarial quantization", subcategory="3.5.3", paper="zaq",
          kind="data-free", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="The generator maximises the logit discrepancy minus a BN-statistics prior, after a warm-up on "
                             "the prior alone; ZAQ's generator maximises the teacher-student discrepancy at logit and "
                             "feature level with a feature-magnitude penalty, without a BN prior.",
                        why="With logits only and no feature term, the generator drifted to inputs no digit resembles; "
                            "the prior (borrowed from ZeroQ) keeps samples near the data.",
                        effect="Closer to a ZeroQ/ZAQ hybrid; the adversarial part is weaker than in the paper."),
              Deviation(what="One simultaneous step for generator and student on the same batch; ZAQ alternates, with "
                             "several student steps per generator step. The generator is a two-layer MLP.",
                        why="One backward pass serves both players; CPU budget.",
                        effect="Less student training per generated batch than the paper."),
          ),
          claims=(
              Claim(text="Adversarial generation beats ZeroQ's distilled data at W2A4.",
                    task="digits-cnn", setting="w2-pc-sym-a4", versus="zeroq/w2-pc-sym-a4", metric="accuracy",
                    higher_is_better=True),
          ))
def zaq(model, cfg, data, *, steps: int = 150, batch: int = 64, lr_g: float = 1e-3, lr_s: float = 1e-3,
        lam: float = 1.0, warmup: int = 50, image_size: int = 8, seed: int = 0):
    for name, value in (("steps", steps), ("batch", batch), ("image_size", image_size)):
        check_positive(name, value)
    for name, value in (("lr_g", lr_g), ("lr_s", lr_s)):
        check_positive(name, value, float)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < float("inf"):
        raise ValueError(f"lam: expected a finite non-negative number, got {lam!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected a non-negative integer, got {warmup!r}")
    check_seed(seed)
    batchnorms(model, "zaq")
    shape = image_shape(model, image_size, "zaq")
    teacher = copy.deepcopy(model)
    prepare(model, cfg)
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)     # the generator's initial weights, without touching the caller's RNG
        G = Generator(shape).to(device=p.device, dtype=p.dtype)
    adversarial_game(teacher, model, G, steps=steps, batch=batch, lr_g=float(lr_g), lr_s=float(lr_s),
                     lam=float(lam), warmup=warmup, seed=seed)
    return freeze(model)
