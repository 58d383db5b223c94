"""Suggest taxonomy sub-categories and tags for a paper title. Suggestions only: a person
who has read the paper files it (`site_gen add --subcategory ... --why ...`); nothing here
writes an entry.

Two stages, tried in order:

1. **Survey match**: the method name a title announces (the text before its first colon,
   e.g. "GPTQ" in "GPTQ: Accurate ...") equals a method that the survey's taxonomy figure
   files under one or more sub-categories (taxonomy.yaml `methods`). A few figure methods
   are known by a name that their title does not start with; `SURVEY_TITLES` maps those
   titles to the method.
2. **Keyword rules**: an ordered list of regular expressions over the title; the first rule
   that matches suggests its sub-category and says why. Words match whole (`posit` is not
   "position", `loss` is not "Lossless"). A title no rule catches gets no suggestion:
   none is better than a wrong one, so there is no catch-all (no 3.8 fallback, no "every
   binary network is 3.1.1").

Tags come from independent rules (a title may carry many) plus the keywords of
the htqin list (bnn, hardware, snn).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

def method_key(name: str) -> str:
    """Normalise a method name for comparison: lower case, LaTeX superscripts
    flattened ("A$^{2}$Q" -> "a2q"), spaces dropped. Hyphens, '#' and '+' are kept
    because they tell methods apart (SQuant vs S-Quant, QuIP vs QuIP#)."""
    name = re.sub(r"\$\^\{?(\w+)\}?\$", r"\1", name)
    return re.sub(r"\s+", "", name).lower()


# Survey names whose titles spell them differently (the figure's spelling -> the
# spelling seen in titles). Without these the figure method would not be found.
SURVEY_SPELLINGS = {
    "hawqv3": "HAWQ-V3",   # "HAWQV3: Dyadic Neural Network Quantization"
}

# Figure methods whose titles do not start with the method name: exact-title
# patterns (case-insensitive) -> the figure's method name. Every entry was checked
# against the paper the survey cites under that name.
SURVEY_TITLES = {
    r"^up or down\? adaptive rounding for post-training quantization$": "AdaRound",
    r"^accurate post training quantization with small calibration sets$": "AdaQuant",
    r"^improving post training neural quantization: layer-wise calibration and integer programming$": "AdaQuant",
    r"^data-free quantization through weight equalization and bias correction$": "DFQ",
    r"^zero-shot adversarial quantization$": "ZAQ",
    r"^robust quantization: one model to rule them all$": "KURE",
    r"^hawq: hessian aware quantization of neural networks with mixed-precision$": "HAWQ-V1",
    r"^generative low-bitwidth data free quantization$": "GDFQ",
    r"^diversifying sample generation for accurate data-free quantization$": "DSG",
    r"^hard sample matters a lot in zero-shot quantization$": "HAST",
    r"^patch similarity aware data-free quantization for vision transformers$": "PSAQ-ViT",
    r"^rethinking data-free quantization as a zero-sum game$": "AdaSG",
    r"^adaptive data-free quantization$": "AdaDFQ",
    r"^temporal dynamic quantization for diffusion models$": "TDQ",
    r"^towards accurate (post-training|data-free) quantization for diffusion models$": "APQ-DM",
    r"^post-training quantization on diffusion models$": "PTQ4DM",
    r"^oscillation-free quantization for low-bit vision transformers$": "OFQ",
    r"^solving oscillation problem in post-training quantization through a theoretical perspective$": "MRECG",
    r"^leveraging inter-layer dependency for post ?-training quantization$": "NWQ",
    r"^memory-efficient fine-tuning of compressed large language models via sub-4-bit integer quantization$": "PEQA",
    r"^optimal clipping and magnitude-aware differentiation for improved quantization-aware training$": "OCTAV",
    r"^mixed-precision neural network quantization via learned layer-wise importance$": "LIMPQ",
    r"^cherry on top: parameter heterogeneity and quantization in large language models$": "CherryQ",
    r"^post-training sparsity-aware quantization$": "SPARQ",
    r"^post-?training quantization with multiple points: mixed precision without mixed precision$": "Multiple points",
    r"^reshape and adapt for output quantization \(\{?raoq\}?\)": "RAOQ",
    r"^simple augmentation goes a long way: adrl for dnn quantization$": "ADRL",
    r"^block and subword-scaling floating-point \(bsfp\)": "BSFP",
    r"^differentiable dynamic quantization with mixed precision and adaptive resolution$": "DDQ",
    r"^towards next-level post-training quantization of hyper-scale transformers$": "Aespa",
    r"^towards efficient post-training quantization of pre-trained language models$": "MREM",
    r"^instance-aware group quantization for vision transformers$": "IGQ-ViT",
    r"^unified data-free compression: pruning and quantization without fine-tuning$": "UDFC",
    r"^data-free network compression via parametric non-uniform mixed precision quantization$": "PNMQ",
    r"^data-free quantization via mixed-precision compensation without fine-tuning$": "DF-MPC",
    r"^boost vision transformer with gpu-friendly sparsity and quantization$": "GPUSQ-ViT",
    r"^mixed-precision quantization for federated learning on resource-constrained heterogeneous devices$": "FedMPQ",
    r"^adaptive loss-aware quantization for multi-bit networks$": "ALQ",
    r"^searching for low-bit weights in quantized neural networks$": "SLB",
    r"^optimizing information theory based bitwise bottlenecks for efficient mixed-precision activation quantization$": "BitwiseBottleneck",
    r"^one-shot model for mixed-precision quantization$": "One-Shot MPS",
    r"^thinking in granularity: dynamic quantization for image super-resolution by intriguing multi-granularity clues$": "Granular-DQ",
    r"^post-training quantization with progressive calibration and activation relaxing for text-to-image diffusion models$": "PCR",
    r"^timestep-aware correction for quantized diffusion models$": "TAC-Diffusion",
    r"^quantized distributed training of large models with convergence guarantees$": "QSDP",
    r"^fine-grained data distribution alignment for post-training quantization$": "FDDA",
    r"^stochastic precision ensemble: self-knowledge distillation for quantized deep neural networks$": "SPEQ",
    r"^automatic joint structured pruning and quantization for efficient neural network training and compression$": "GETA",
    r"^pushing the limits of narrow precision inferencing at cloud scale with microsoft floating point$": "MSFP",
}

# Title-prefix names that also belong to an unrelated paper: the prefix alone is not
# enough, so the survey's own paper is pinned by a word of its title.
SURVEY_DISAMBIGUATION = {
    # Two different "Q-ViT" papers exist; the figure's (ref 34, loss function) is
    # the NeurIPS 2022 "Accurate and Fully Quantized Low-bit Vision Transformer".
    "q-vit": r"accurate and fully quantized",
    # The figure's A2Q (adaptive allocation) is the GNN aggregation-aware paper,
    # not "A2Q: Accumulator-Aware Quantization".
    "a2q": r"aggregation-aware",
}


def survey_index(taxonomy: dict) -> dict[str, tuple[str, list[str]]]:
    """Map normalised figure method name -> (figure spelling, sub-category ids in
    taxonomy order). Bare references ("ref-N") name no method and are skipped."""
    index: dict[str, tuple[str, list[str]]] = {}
    for cat in taxonomy["categories"]:
        for sub in cat["subcategories"]:
            for method in sub.get("methods", []):
                if method.startswith("ref-"):
                    continue
                key = method_key(method)
                spelling, subs = index.get(key, (method, []))
                if sub["id"] not in subs:
                    subs.append(sub["id"])
                index[key] = (spelling, subs)
    for alias, method in SURVEY_SPELLINGS.items():
        index[alias] = index[method_key(method)]
    return index


def title_method(title: str) -> str | None:
    """The method name a title announces before its first colon, if it looks like a
    name (at most three words), else None."""
    head, sep, _ = title.partition(":")
    if not sep or not head.strip() or len(head.split()) > 3:
        return None
    return head.strip()


def survey_match(title: str, index: dict) -> tuple[str, list[str]] | None:
    """(figure method name, sub-category ids) when the title is a figure method."""
    low = title.lower()
    for pattern, method in SURVEY_TITLES.items():
        if re.search(pattern, low):
            return index[method_key(method)][0], list(index[method_key(method)][1])
    name = title_method(title)
    if name is None:
        return None
    key = method_key(name)
    if key not in index:
        return None
    guard = SURVEY_DISAMBIGUATION.get(key)
    if guard and not re.search(guard, low):
        return None
    spelling, subs = index[key]
    return spelling, list(subs)


@dataclass(frozen=True)
class Rule:
    """One keyword rule: `pattern` (case-insensitive regex over the title) suggests
    `subcategory`; `why` is the reviewer's reason."""
    name: str
    pattern: str
    subcategory: str
    why: str


DIFFUSION = r"diffusion|\bdit\b|dits\b|text-to-image|video generation|stable diffusion|denois|flow matching|\bflux\b"
# "scale" as the quantizer's step size, not "at Scale" (LLM.int8()), "large-scale" or "scaling laws".
SCALE = r"(?<!at )(?<!large-)(?<!large )\bscal(?:e|es|ing)\b(?! laws?)"

# Ordered: the first matching rule wins. Domain-specific families (diffusion,
# data-free, number formats) come first because their titles also mention the
# generic words (outlier, calibration, mixed precision) that later rules key on.
RULES: tuple[Rule, ...] = (
    # --- 3.7 diffusion models -------------------------------------------------------
    Rule("dm-calibration", rf"({DIFFUSION}).*(calibrat|timestep-aware sampl|sampling-aware|data-free|dataset)|(calibrat|data-free).*({DIFFUSION})",
         "3.7.2", "diffusion papers about which samples/timesteps calibrate the quantizer"),
    Rule("dm-activation", rf"({DIFFUSION}).*(activation|temporal|timestep|\bdynamic\b|distribution|outlier|smooth|rotat)|(temporal|timestep|activation|outlier).*({DIFFUSION})",
         "3.7.3", "diffusion papers that track how activations change over denoising steps"),
    Rule("dm-error", rf"({DIFFUSION}).*(error|correct|compensat|mixed|bits?\b|binar|low-rank|1-bit|extreme|ultra-low)|(error|binar|mixed-precision|low-rank).*({DIFFUSION})",
         "3.7.4", "diffusion papers that model, correct or budget the quantization error"),
    Rule("dm-other", DIFFUSION,
         "3.7.5", "remaining diffusion/DiT/video-generation quantization papers"),
    # --- 3.5 data-free ------------------------------------------------------------------
    Rule("df-adversarial", r"(adversarial|zero-sum|generator|\bgan\b).*(data-free|zero-shot|quantiz)|(data-free|zero-shot).*(adversarial|generator|game)",
         "3.5.3", "synthetic calibration data produced by a generator trained against the quantized model"),
    Rule("df-generation", r"data-free|data free|zero-shot|zero shot|synthetic (data|image|sample)|sample generation|without (real )?data|dataless|data-agnostic",
         "3.5.2", "data-free methods mostly synthesise calibration inputs (BN-statistics matching, generators)"),
    # --- 3.6 number formats ---------------------------------------------------------------
    Rule("fmt-float", r"floating[- ]point|\bfloat|\bfp ?(4|6|8|16)\b|\bmx(fp|int)?\d*\b|microscal|\bposits?\b|\bexponent\b|block floating|\bbfp\b|\bnvfp4\b|minifloat",
         "3.6.1", "low-bit floating-point or shared-exponent formats"),
    Rule("fmt-fixed", r"fixed[- ]point|integer[- ]only|dyadic|power[- ]of[- ]two|shift(-| )?based|bit[- ]shift",
         "3.6.2", "fixed-point / integer-only arithmetic and power-of-two scales"),
    Rule("fmt-other", r"look-?up table|\blut\b|codebook|vector quantiz|additive quantiz|lattice|non-?uniform|logarithmic|\blog(arithmic)?[- ]?(scale|quant|domain)|learnable (quantization )?levels|trellis|product quantiz|\bnf4\b|normal ?float|\blora\b|\badapters?\b",
         "3.6.3", "non-uniform grids, codebooks and quantized-base fine-tuning formats (NF4/QLoRA family)"),
    # --- 3.3 mixed precision ------------------------------------------------------------
    Rule("mp-search", r"(mixed[- ]precision|bit[- ]?width|bit allocation|precision allocation).*(search|reinforcement|evolution|integer (linear )?programming|\bilp\b|\bnas\b|pareto|knapsack)|(search|automl|automated|reinforcement).*(mixed[- ]precision|bit[- ]?width|quantization polic)",
         "3.3.3", "bit-width assignment found by an explicit search/optimisation procedure"),
    Rule("mp-dynamic", r"(\bdynamic\b|content-aware|instance-aware|input-adaptive|runtime|on-the-fly).*(precision|bit[- ]?width|quantiz)|any-?precision|switchable|once-for-all|multi-bit|arbitrary bit",
         "3.3.4", "precision that changes per input or at run time"),
    Rule("mp-adaptive", r"(learn(ed|able)?|differentiable|adaptive|trainable|gradient-guided)\b[\w\s-]{0,30}(bit[- ]?widths?|precision|mixed)|mixed[- ]precision.*(learn|differentiable|adaptive)|fractional bit|bit[- ]?width-adaptive",
         "3.3.2", "bit-widths learned jointly with the weights"),
    Rule("mp-rough", r"mixed[- ]precision|bit[- ]?width allocation|bit allocation|sensitivity|hessian[- ]aware|salien|heterogene",
         "3.3.1", "bit-widths set from a one-shot sensitivity/importance score"),
    # --- 3.2.1 oscillation --------------------------------------------------------------
    Rule("oscillation", r"oscillat|weight flip|flip-?flop|latent weight|sign flip",
         "3.2.1", "weights bouncing between grid points during QAT"),
    # --- 3.4 redistribution -------------------------------------------------------------
    Rule("rounding", r"\brounding\b|round(-| )to(-| )nearest|\bround\b",
         "3.4.4", "learns or searches the up/down rounding decision"),
    Rule("outlier", r"outlier|smooth|\brotat|hadamard|incoheren|equivalent transform|equaliz|massive activation|channel[- ]wise scal|migrat|reorder|permut|kv[- ]?cache|key[- ]value cache|attention sink",
         "3.4.3", "moves or removes outliers (smoothing, rotation, reordering) before quantizing"),
    Rule("bias", r"\bbias\b|\bshift\b|re-?centr|mean[- ]correct",
         "3.4.1", "corrects the systematic shift (bias) that quantization introduces"),
    Rule("distribution", r"distribution|kurtosis|regulari[sz]|\buniform\b|gaussian|entropy|reparameteri|normaliz|batch ?norm",
         "3.4.2", "reshapes weight/activation distributions so a uniform grid fits them"),
    # --- 3.2 metric and mechanism -------------------------------------------------------------
    Rule("loss", r"distill|teacher|\bloss(es)?\b|objective|contrastive|self-supervis",
         "3.2.2", "changes the training or calibration objective"),
    Rule("mechanism", r"hessian|second-order|optimal brain|reconstruct|error (compensat|feedback)|low-rank|\bsvd\b|straight-through|\bste\b|gradient estimat|proximal|annealing",
         "3.2.3", "a new optimisation mechanism: second-order updates, reconstruction, gradient estimators"),
    # --- 3.1 better s and z -------------------------------------------------------------
    Rule("task-loss", r"learn(ed|able|ing)? (step|scale|clip|quantiz|interval|threshold|range)|step size|trainable (scale|threshold|quantiz)|task loss|loss-aware",
         "3.1.2", "scale/zero-point learned from the task loss by back-propagation"),
    Rule("quant-loss", rf"clipping|\bclipped\b|{SCALE}|\branges?\b|quantization interval|threshold|calibrat|quantization error|\bmse\b|zero[- ]point|asymmetric|granularit|group-wise|per-channel|block-wise|\btwin\b",
         "3.1.1", "scale/zero-point chosen to minimise the quantization error itself"),
)


def suggest_subcategory(title: str) -> tuple[str, Rule] | None:
    """(sub-category id, the rule that suggests it) for a title, or None when no rule fits.
    A suggestion for a person to confirm against the paper, never a filing."""
    low = title.lower()
    for rule in RULES:
        if re.search(rule.pattern, low):
            return rule.subcategory, rule
    return None


# Tag rules: (tag, regex over the lowercased title). All matching tags apply.
TAG_RULES: tuple[tuple[str, str], ...] = (
    ("llm", r"\bllms?\b|large language|language models?|\bgpt|llama|\bopt\b|generative pre-trained|transformers? for language|\bchatbot|reasoning model|\bslms?\b"),
    ("vit", r"vision transformer|\bvits?\b|\bdeit\b|\bswin\b"),
    ("cnn", r"convolution|\bcnns?\b|resnet|mobilenet|efficientnet|\bdcnn"),
    ("diffusion", r"diffusion|\bdits?\b|text-to-image"),
    ("detection", r"detect|\bdetr\b|yolo"),
    ("segmentation", r"segment"),
    ("super-resolution", r"super-?resolution|\bsr\b"),
    ("gnn", r"graph neural|\bgnns?\b|graph convolution"),
    ("ssm", r"mamba|state[- ]space"),
    ("moe", r"mixture[- ]of[- ]experts|\bmoe\b"),
    ("vlm", r"vision[- ]language|multimodal|multi-modal|\bclip\b|\bvlms?\b|\bvla\b|\bmllms?\b"),
    ("speech", r"speech|\basr\b|audio|speaker|keyword spotting"),
    ("snn", r"spiking|\bsnns?\b"),
    ("bert", r"\bbert\b|roberta"),
    ("recommendation", r"recommend|\bctr\b"),
    ("ptq", r"post-?training|\bptq\b|calibration"),
    ("qat", r"quantization-aware training|quantization aware training|\bqat\b|training (low|quantized)"),
    ("data-free", r"data-free|data free|zero-shot|zero shot"),
    ("weight-only", r"weight-only|weight only"),
    ("weight-activation", r"weight-activation|w\d+a\d+|activation quantization"),
    ("kv-cache", r"kv[- ]?cache|key-value cache"),
    ("attention", r"attention|softmax"),
    ("training", r"quantized training|low-precision training|low-bit training|training with (low|quantized)|gradient(s)? quantiz|quantized gradient|optimizer state|fp8 training|train(ing)? (in|with) (fp8|4-bit|8-bit)"),
    ("hardware", r"accelerat|fpga|asic|hardware|in-memory|processor|\bchip\b|energy-efficient|silicon|\bgpu kernel|systolic"),
    ("binary", r"binar|1-bit|one-bit|xnor|\bbnns?\b"),
    ("ternary", r"ternar|1\.58"),
    ("2-bit", r"2-bit|\b2 bits?\b|two-bit|w2a"),
    ("3-bit", r"3-bit|three-bit|w3a"),
    ("4-bit", r"4-bit|\b4 bits?\b|four-bit|int4|w4a|\bfp4|nf4"),
    ("8-bit", r"8-bit|\b8 bits?\b|int8|eight-bit|w8a8"),
    ("fp8", r"\bfp8"),
    ("fp4", r"\bfp4|nvfp4|mxfp4"),
    ("mixed", r"mixed[- ]precision|mixed-bit|bit[- ]?width allocation"),
)

# htqin-awesome-list keyword -> tag (qnn/other say nothing a tag could express).
KEYWORD_TAGS = {"bnn": "binary", "hardware": "hardware", "snn": "snn"}


def tags_for(title: str, keywords: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Sorted tags for a title plus the source list's keywords."""
    low = title.lower()
    tags = {tag for tag, pattern in TAG_RULES if re.search(pattern, low)}
    tags.update(KEYWORD_TAGS[k] for k in keywords if k in KEYWORD_TAGS)
    return sorted(tags)
