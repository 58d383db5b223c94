"""A small DDPM on the real 8×8 digits, its fixed DDIM sampler and the Digits-FD metric.

Model: a compact U-Net (two resolutions, 8×8 and 4×4) with a sinusoidal time-step
embedding. Every convolution is `digits.PatchConv` (unfold + nn.Linear) and the time MLP is
made of nn.Linear, so every Linear-based quantizer applies unchanged; the other layers are
GroupNorm, SiLU, average pooling, nearest upsampling and one skip concatenation.

Diffusion: T = 1000 steps, cosine noise schedule (Nichol & Dhariwal), ε-prediction, trained
for 2000 Adam steps of 128 on the standardised training digits of `digits.load_split()` with a
fixed seed and one thread (about 3 minutes of one core); the exponential moving average of the
weights is the model. The trained weights are shipped in refimpl/bench/weights/ with a pinned
sha256 (retrain with `python -m refimpl.bench.train digits-ddpm`).

Sampler (fixed for every run): deterministic DDIM, 50 steps (t = 980, 960, ..., 0), η = 0,
the predicted x₀ clipped to the pixel range, starting from noise drawn with a fixed seed.

Digits-FD: the Fréchet distance between generated digits and the 540 held-out test digits
in the 32-d feature space of the trained digits classifier (`digits.load_model().features`),

    FD = ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^{1/2}),

computed in float64 with scipy.linalg.sqrtm.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.bench.digits import PatchConv
from refimpl.bench.taskbase import Task

VERSION = "1"      # bump when the model, the schedule or the training recipe changes (invalidates the cache)
WEIGHTS_FILE = f"digits-ddpm-v{VERSION}.pt"   # shipped in refimpl/bench/weights/, sha256 in its MANIFEST.json
T_TRAIN = 1000
SAMPLER_STEPS = 50
SCHEDULE = "cosine"     # on these digits: Digits-FD 2.6 vs 3.3 for linear β after the same training (300 samples)
EVAL_SAMPLES = 500
EVAL_NOISE_SEED = 1234
CALIB_NOISE_SEED = 4321


# ---------------------------------------------------------------- model

class Conv(PatchConv):
    """digits.PatchConv with the patches gathered from shifted slices instead of F.unfold.

    The same rows in the same order (channel-major, then kernel row, then kernel column), so
    the same function and the same nn.Linear; the gather is about 1.5× faster than F.unfold on CPU.
    """

    def forward(self, x):
        n, c, h, w = x.shape
        k, pad = self.k, self.k // 2
        xp = F.pad(x, (pad, pad, pad, pad))
        shifts = [xp[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)]
        patches = torch.stack(shifts, dim=2).permute(0, 3, 4, 1, 2).reshape(n, h * w, c * k * k)
        y = self.linear(patches)                                                 # [n, h·w, c_out]
        return y.transpose(1, 2).reshape(n, -1, h, w)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of integer steps t [b] → [b, dim] (sin and cos of geometric frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the projected time embedding, twice; residual (1×1 conv if widths differ)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), Conv(c_in, c_out)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), Conv(c_out, c_out)
        self.skip = Conv(c_in, c_out, k=1) if c_in != c_out else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class DigitsUNet(nn.Module):
    """ε_θ(x_t, t) for 8×8 one-channel images: 8×8 (c) → 4×4 (2c) → 8×8 (c) with a skip concatenation.

    Submodules that depend on the time step (time-step-aware quantizers) may define
    `set_timestep(t)`; the forward pass hands them t before anything else runs.
    """
    # inputs that are data, not activations: the noisy image and the sinusoidal step features
    act_quant_skip = ("conv_in", "time.0")

    def __init__(self, c: int = 16, t_dim: int = 64, t_feat: int = 32):
        super().__init__()
        self.t_feat = t_feat
        self.time = nn.Sequential(nn.Linear(t_feat, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim), nn.SiLU())
        self.conv_in = Conv(1, c)
        self.down = ResBlock(c, c, t_dim)
        self.mid1 = ResBlock(c, 2 * c, t_dim)
        self.mid2 = ResBlock(2 * c, 2 * c, t_dim)
        self.up = ResBlock(3 * c, c, t_dim)
        self.norm_out, self.conv_out = nn.GroupNorm(8, c), Conv(c, 1)

    def forward(self, x, t):
        if t.numel() not in (1, x.shape[0]):
            raise ValueError(f"t: expected one step or one per image ({x.shape[0]}), got {t.numel()}")
        t = t.reshape(-1).expand(x.shape[0])
        for m in self.modules():
            if hasattr(m, "set_timestep"):
                m.set_timestep(t)
        emb = self.time(timestep_features(t, self.t_feat))
        h8 = self.down(self.conv_in(x), emb)                            # [b, c, 8, 8]
        h4 = self.mid2(self.mid1(F.avg_pool2d(h8, 2), emb), emb)        # [b, 2c, 4, 4]
        h = torch.cat([F.interpolate(h4, scale_factor=2.0, mode="nearest"), h8], dim=1)
        h = self.up(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- schedule and sampler

def alphas_bar(steps: int = T_TRAIN, kind: str = "linear") -> torch.Tensor:
    """ᾱ_t, float64 [steps]: linear β from 1e-4 to 0.02, or the cosine schedule (s = 0.008, β ≤ 0.999)."""
    if kind == "linear":
        return torch.cumprod(1 - torch.linspace(1e-4, 0.02, steps, dtype=torch.float64), 0)
    f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


@dataclass(frozen=True)
class DDIM:
    """Deterministic (η = 0) or stochastic DDIM on a sub-sequence of the training steps.

    x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,   x̂₀ = clip((x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t),
    σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}), and ᾱ = 1 after the last step.
    """
    abar: torch.Tensor           # [T] float64
    steps: int = SAMPLER_STEPS
    eta: float = 0.0
    clip: tuple[float, float] = (-1.0, 1.0)

    @property
    def timesteps(self) -> list[int]:
        """The steps visited, from noisy to clean: 980, 960, ..., 0 for 50 of 1000."""
        stride = len(self.abar) // self.steps
        return list(range(stride * (self.steps - 1), -1, -stride))

    def coefficients(self, i: int) -> tuple[float, float, float]:
        """(ᾱ_t, ᾱ_{t'}, σ) of step i (t = timesteps[i], t' the next one)."""
        ts = self.timesteps
        a_t = float(self.abar[ts[i]])
        a_prev = float(self.abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        sigma = self.eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        return a_t, a_prev, sigma

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None = None,
             eps_var: float = 0.0) -> torch.Tensor:
        """x_{t'} from x_t and ε̂. eps_var: variance of noise already inside ε̂ (PTQD's residual);
        the sampler's own noise is lowered by c²·eps_var, c the coefficient of ε̂ in x_{t'}."""
        a_t, a_prev, sigma = self.coefficients(i)
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(*self.clip)
        out = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0 and z is not None:
            c = math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) - math.sqrt(a_prev * (1 - a_t) / a_t)
            out = out + math.sqrt(max(sigma ** 2 - c * c * eps_var, 0.0)) * z
        return out

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: torch.Tensor, *, record: list | None = None,
               seed: int = 0, batch_size: int = 50) -> torch.Tensor:
        """Run the sampler from `noise` [n, 1, 8, 8]; x_t of every step is appended to `record`
        as (x_t, t) when given. Stochastic steps (η > 0) draw z from a generator seeded by `seed`."""
        out = []
        # chunks of ~50 images keep the patch matrices in cache: 2–3× faster on CPU than one big batch
        for start in range(0, noise.shape[0], batch_size):
            out.append(self._sample(model, noise[start:start + batch_size], record, seed + start))
        return torch.cat(out)

    def _sample(self, model, x, record, seed):
        g = torch.Generator(device="cpu").manual_seed(seed)
        for i, t in enumerate(self.timesteps):
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            if record is not None:
                record.append((x.clone(), tt))
            eps = model(x, tt)
            z = torch.randn(x.shape, generator=g).to(x) if self.eta > 0 else None
            residual = getattr(model, "eps_residual_var", None)   # set by PTQD
            x = self.step(i, x, eps, z, residual(t) if residual is not None else 0.0)
        return x


# ---------------------------------------------------------------- training and cache

def pixel_range() -> tuple[float, float]:
    """Standardised values of pixel 0 and pixel 1 (the clip range of generated digits)."""
    from refimpl.bench.digits import normalisation
    mean, std = normalisation()
    return (0.0 - mean) / std, (1.0 - mean) / std


def default_sampler() -> DDIM:
    return DDIM(alphas_bar(kind=SCHEDULE), SAMPLER_STEPS, 0.0, pixel_range())


def train_ddpm(seed: int = 0, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
               ema: float = 0.995, on_step=None) -> DigitsUNet:
    """ε-prediction MSE on the standardised training digits; returns the EMA of the weights."""
    from refimpl.bench.digits import load_split
    X = load_split()["train"].x
    torch.manual_seed(seed)
    model = DigitsUNet()
    avg = DigitsUNet()
    avg.load_state_dict(model.state_dict())
    abar = alphas_bar(kind=SCHEDULE).to(torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(X), (batch_size,), generator=g)
        t = torch.randint(T_TRAIN, (batch_size,), generator=g)
        eps = torch.randn(batch_size, 1, 8, 8, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * X[idx] + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(x_t, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for p_avg, p in zip(avg.parameters(), model.parameters()):
                p_avg.lerp_(p, 1 - ema)
        if on_step is not None:
            on_step(step, loss.item())
    return avg.eval()


# ---------------------------------------------------------------- metric

def frechet_distance(F_a: torch.Tensor, F_b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) of two feature sets [n, d], in float64."""
    import numpy as np
    from scipy.linalg import sqrtm
    a, b = F_a.double().cpu().numpy(), F_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    C_a, C_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(C_a @ C_b)
    root = root.real    # imaginary parts are round-off of a product of two PSD matrices
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(C_a + C_b - 2 * root))


@torch.no_grad()
def sample_report(samples: torch.Tensor, real: torch.Tensor, classifier: nn.Module) -> dict:
    """Digits-FD against `real`, mean classifier confidence and class histogram of `samples`."""
    classifier = classifier.to(samples.device)
    probs = classifier(samples).softmax(-1)
    return {"digits_fd": frechet_distance(classifier.features(samples), classifier.features(real.to(samples.device))),
            "confidence": probs.max(-1).values.mean().item(),
            "class_hist": torch.bincount(probs.argmax(-1).cpu(), minlength=10).tolist()}


def load_model() -> DigitsUNet:
    """The trained fp32 DDPM: the shipped weights, checked against their pinned sha256."""
    from refimpl.bench.models import load_pinned
    return load_pinned(WEIGHTS_FILE, DigitsUNet)


def noise(n: int, seed: int, device=None) -> torch.Tensor:
    """n starting images [n, 1, 8, 8] of standard normal noise drawn on the CPU with `seed`."""
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device)


def weights_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names and values)."""
    import hashlib
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0" + value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def storage_bits(model: nn.Module) -> dict:
    """model_size, plus the extra scales of layers quantized in groups (attribute `quant_group_size`)."""
    from refimpl.core.fakequant import model_size
    out = model_size(model)
    for m in model.modules():
        g = getattr(m, "quant_group_size", None)
        if isinstance(m, nn.Linear) and getattr(m, "quant_bits", None) is not None and g:
            out["size_bits"] += m.out_features * (m.in_features // g - 1) * 32   # model_size counted one per row
    return out


# ---------------------------------------------------------------- the task

class DigitsDDPMTask(Task):
    id = "digits-ddpm"
    description = ("a small DDPM (U-Net on 8×8 / 4×4, 16/32 channels, convolutions as unfold + Linear, "
                   "time-step embedding) trained on scikit-learn's digits; 500 digits generated by 50-step "
                   "deterministic DDIM from fixed noise; Digits-FD = Fréchet distance to the 540 held-out test "
                   "digits in the digits-cnn classifier's 32-d features")
    caveat = ("weights per output channel, symmetric; activations per tensor, static min/max over calibration "
              "pairs (x_t, t) taken from the fp model's own DDIM trajectories, evenly over the 50 steps, "
              "unless the technique sets them; the noisy image and the sinusoidal step features stay in float. "
              "500 samples in a 32-d feature space: FD carries a finite-sample bias (the fp model's FD is not 0), "
              "so compare techniques with each other and with fp, and read sample_rmse_fp (distance to the fp "
              "model's samples from the same noise) for small differences.")
    version = VERSION
    primary = "digits_fd"
    higher_is_better = False
    in_features = (9, 16, 32, 48, 64, 144, 288, 432)
    static_acts = True
    calib_n, calib_seq = 800, 0          # (x_t, t) pairs: 16 trajectories × 50 steps; seq is meaningless
    SETTINGS = ((8, 8), (4, 8), (4, 4))
    MIXED_SETTINGS = ()
    seeds = (0, 1, 2)      # calibration noise; the evaluation noise is fixed
    trained_here = True
    interval_metrics = ("sample_rmse_fp",)
    # extra option sets the matrix runs: PTQ4DM-style single-step calibration, against Q-Diffusion's default
    VARIANTS = {"qdiffusion_calib": ({"scheme": "single"},)}
    # naive PTQ (rtn weights, min-max activations) and two weight methods, run by the harness as on digits-cnn
    baselines = ("rtn", "gptq", "mse_clip")

    def __init__(self):
        super().__init__()
        self._test = None

    def load(self) -> nn.Module:
        self.tokenizer = "digits-ddpm"   # no tokenizer: marks the task as loaded
        return load_model()

    def sampler(self) -> DDIM:
        return default_sampler()

    def model_sha256(self) -> str:
        from refimpl.bench.models import manifest
        return manifest()[WEIGHTS_FILE]["sha256"]

    def fingerprint(self) -> dict:
        from refimpl.bench import digits
        from refimpl.bench.models import manifest
        from refimpl.bench.records import sha256_data
        pins = manifest()
        return {"model_sha256": self.model_sha256(),
                "classifier_sha256": pins[digits.WEIGHTS_FILE]["sha256"],
                "eval_sha256": sha256_data([self.test_digits(), noise(EVAL_SAMPLES, EVAL_NOISE_SEED)])}

    def test_digits(self) -> torch.Tensor:
        if self._test is None:
            from refimpl.bench.digits import load_split
            self._test = load_split()["test"].x
        return self._test

    def calib(self, seed: int, n: int, seq: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """n pairs (x_t, t): the inputs the fp model receives at each of the 50 DDIM steps while it
        generates n/50 digits from calibration noise (seeded by `seed`, disjoint from the evaluation
        noise), one batch per step — Q-Diffusion's observation that calibration must cover every
        step is the default here, so naive PTQ is not handicapped by a poor calibration set."""
        from refimpl.diffusion._common import trajectory
        steps = self.sampler().steps
        if isinstance(n, bool) or not isinstance(n, int) or n < steps or n % steps:
            raise ValueError(f"calib_n: digits-ddpm takes the same number of pairs at each of the {steps} "
                             f"sampler steps; use a positive multiple of {steps}, got {n!r}")
        return trajectory(load_model(), self.sampler(), noise(n // steps, CALIB_NOISE_SEED + seed))

    def task_data(self, kind: str, seed: int, calib: list | None, options: dict):
        """Diffusion techniques get the calibration pairs and, in `extra`, the sampler, the noise
        schedule ᾱ and `noise(n)`, which draws fresh calibration noise (never the evaluation noise)."""
        from refimpl.core.data import TaskData
        if kind != "diffusion":
            raise ValueError(f"task: digits-ddpm has no data for {kind} techniques (diffusion and post-training only)")
        sampler = self.sampler()
        return TaskData(calib=calib, extra={
            "sampler": sampler, "schedule": sampler.abar,
            "noise": lambda n, offset=1: noise(n, CALIB_NOISE_SEED + seed + 7919 * offset)})

    @torch.no_grad()
    def reference(self, fp_model: nn.Module) -> torch.Tensor:
        """The fp model's samples from the evaluation noise, cached beside the model under a key
        made of its weights, the device type and the torch version (a retrained model misses it)."""
        from refimpl.bench.models import cache_dir
        from refimpl.core.calib import model_device
        device = model_device(fp_model)
        key = {"weights": weights_sha256(fp_model), "device": device.type, "n": EVAL_SAMPLES, "torch": str(torch.__version__)}
        path = cache_dir() / f"digits-ddpm-v{VERSION}-reference-{device.type}.pt"
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                return cached["samples"].to(device)
        except (OSError, RuntimeError, ValueError, AttributeError, KeyError, pickle.UnpicklingError):
            pass   # missing or unreadable: computed below
        samples = self.sampler().sample(fp_model, noise(EVAL_SAMPLES, EVAL_NOISE_SEED, device))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"key": key, "samples": samples.cpu()}, tmp)
        tmp.replace(path)
        return samples

    @torch.no_grad()
    def evaluate(self, model: nn.Module, reference=None, progress: bool = False) -> dict:
        from refimpl.bench.digits import load_model as load_classifier
        from refimpl.core.calib import model_device
        device = model_device(model)
        samples = self.sampler().sample(model, noise(EVAL_SAMPLES, EVAL_NOISE_SEED, device))
        out = sample_report(samples, self.test_digits(), load_classifier())
        if reference is not None:
            out["sample_rmse_fp"] = (samples - reference.to(device)).pow(2).mean().sqrt().item()
        out.update(storage_bits(model))
        return out


def act_ranges(n: int = 16, seed: int = 0) -> dict:
    """Per-layer min/max of every quantized layer's input at each of the 50 DDIM steps of the fp
    model, over n trajectories from calibration noise (the time-step profile behind TDQ)."""
    from refimpl.diffusion._common import step_ranges, trajectory
    model = load_model()
    return step_ranges(model, trajectory(model, default_sampler(), noise(n, CALIB_NOISE_SEED + seed)))


def write_act_ranges(path=None, n: int = 16) -> Path:
    """results/digits-ddpm/act_ranges.json: {"steps", "layers": {name: {"min", "max"}}, "provenance"}."""
    from refimpl.bench import records
    path = Path(path) if path is not None else records.RESULTS / "digits-ddpm" / "act_ranges.json"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = act_ranges(n)
    finally:
        torch.set_num_threads(prev)
    data["provenance"] = records.provenance(threads=1)
    data["task_version"] = VERSION
    records.write_json_atomic(path, data)
    return path


if __name__ == "__main__":
    print(write_act_ranges())
