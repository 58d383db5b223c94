"""One registry for every reference implementation.

A technique registers itself in its own file with the `register` decorator; pages,
tests and the benchmark matrix are all generated from this registry, never from a
second hand-kept list. `load_all()` imports every technique module so that the
registry is complete.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# What a technique's callable receives and returns, by kind:
#   ptq-weight      fn(model, cfg: QuantConfig, calib: list | None, **opts) -> model  (weights only)
#   ptq-weight-act  same signature; also quantizes the inputs of Linear layers to cfg.act_bits
#   format          same signature; weights are cast to a number format (cfg.bits is implied)
#   qat / mixed-precision / data-free / diffusion: fn(model, cfg, data: TaskData, **opts) -> model, with
#                   data from the task (refimpl/core/data.py); mixed-precision reads cfg.bits as the
#                   average budget; data-free gets no data unless opts['source'] == 'real'
#   ptq-block       fn(model, cfg, data: TaskData, **opts) -> model; post-training reconstruction that
#                   quantizes activations itself while it learns (QDrop): it reads only data.calib
KINDS = ("ptq-weight", "ptq-weight-act", "format", "qat", "mixed-precision", "data-free", "diffusion", "ptq-block")

_REGISTRY: dict[str, "Technique"] = {}
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# Sub-packages that hold infrastructure, not techniques.
_NOT_TECHNIQUES = {"core", "bench", "deploy"}


@dataclass(frozen=True)
class Deviation:
    """One way a module departs from its paper, stated so that the technique page can show it."""
    what: str      # what differs, concretely (e.g. "200 optimisation steps per layer, not 10,000")
    why: str       # why we keep it (CPU budget, the task has no such layer, ...)
    effect: str    # expected effect on the results (direction, size when measured)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper that our tasks can test, as data: the site computes its verdict from records.

    Confirmed when this technique's cell beats `versus` on `metric` and the paired interval of the
    difference excludes zero; not confirmed when it is worse beyond the interval; inconclusive otherwise.
    """
    text: str              # the claim in words, e.g. "p=1/2 beats always quantizing (p=0) at W2A4"
    task: str              # bench task id
    setting: str           # record setting name of this technique's cell, e.g. "w2-pc-sym-a4"
    versus: str            # "<technique>/<setting>" of the cell to compare with
    metric: str            # key of the record's metrics, e.g. "accuracy", "ppl"
    higher_is_better: bool
    cause: str = ""        # the likely cause when the claim is not confirmed here


@dataclass(frozen=True)
class Technique:
    id: str
    name: str
    subcategory: str          # taxonomy id such as "3.2.3", or "baseline"
    paper: str                # id of a papers/ entry
    kind: str
    tasks: tuple[str, ...]
    fn: Callable = field(repr=False, compare=False)
    needs_calib: bool = False
    calib_free_when: tuple[tuple[str, object], ...] = ()   # options under which no data is needed
    channel_sym_only: bool = False   # its grid is always symmetric, one scale per output channel
    bits: tuple[int, ...] | None = None   # the only bit-widths it supports (None: any 1..16)
    module: str = ""
    doc: str = ""
    # None means "never reviewed" (a test fails on it); () means "reviewed: follows the paper".
    deviations: tuple[Deviation, ...] | None = None
    claims: tuple[Claim, ...] = ()

    @property
    def source_file(self) -> Path:
        # unwrap decorators such as torch.no_grad, which would point at torch's own file
        return Path(inspect.getsourcefile(inspect.unwrap(self.fn))).resolve()

    @property
    def summary(self) -> str:
        """The first paragraph of the module docstring (what the site shows first)."""
        return self.doc.strip().split("\n\n")[0].replace("\n", " ") if self.doc else ""

    def calib_needed(self, options: dict | None = None) -> bool:
        """needs_calib, unless `options` select a data-free variant (e.g. mse_clip objective='weight')."""
        options = options or {}
        return self.needs_calib and not any(options.get(k) == v for k, v in self.calib_free_when)

    def options(self) -> dict[str, object]:
        """Technique-specific keyword options and their defaults."""
        sig = inspect.signature(self.fn)
        return {n: p.default for n, p in sig.parameters.items()
                if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}


def register(*, id: str, name: str, subcategory: str, paper: str, kind: str,
             tasks: tuple[str, ...] | list[str], needs_calib: bool = False,
             bits: tuple[int, ...] | None = None, calib_free_when: dict | None = None,
             channel_sym_only: bool = False, deviations: tuple | list | None = None,
             claims: tuple | list = ()) -> Callable:
    """Decorator: register `fn` as technique `id`. Re-registration of the same id is an error."""
    if kind not in KINDS:
        raise ValueError(f"register({id!r}): kind must be one of {KINDS}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        module = inspect.getmodule(fn)
        prior = _REGISTRY.get(id)
        if prior is not None and prior.module != fn.__module__:
            raise ValueError(f"technique id {id!r} registered twice ({prior.module}, {fn.__module__})")
        _REGISTRY[id] = Technique(
            id=id, name=name, subcategory=subcategory, paper=paper, kind=kind,
            tasks=tuple(tasks), fn=fn, needs_calib=needs_calib,
            calib_free_when=tuple(sorted((calib_free_when or {}).items())), channel_sym_only=channel_sym_only,
            bits=tuple(bits) if bits else None, module=fn.__module__,
            doc=(module.__doc__ or "") if module else "",
            deviations=None if deviations is None else tuple(deviations), claims=tuple(claims),
        )
        return fn

    return deco


def load_all() -> None:
    """Import every technique module under refimpl/ so that all registrations run."""
    for info in pkgutil.walk_packages([str(_PACKAGE_ROOT)], prefix="refimpl."):
        top = info.name.split(".")[1]
        if top in _NOT_TECHNIQUES or info.name.split(".")[-1].startswith("_"):
            continue
        importlib.import_module(info.name)


def all_techniques() -> list[Technique]:
    load_all()
    return sorted(_REGISTRY.values(), key=lambda t: (t.subcategory == "baseline", t.subcategory, t.id))


def get(method: str) -> Technique:
    """Look a technique up by id; an unknown id is a ValueError that suggests the nearest ids."""
    if not isinstance(method, str):
        raise ValueError(f"method: expected a technique id (str), got {type(method).__name__}")
    load_all()
    if method not in _REGISTRY:
        near = difflib.get_close_matches(method, sorted(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"method: unknown technique {method!r}{hint}; see `python -m refimpl list`")
    return _REGISTRY[method]
