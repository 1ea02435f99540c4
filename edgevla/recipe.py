"""The build recipe: what to do to a policy (prune, quantize, export) and how to prove it.

A recipe is resolved from four layers, each only saying what it changes::

    built-in defaults  <  the target's recipe  <  the user's recipe file  <  CLI overrides

Every layer is checked on its own (so an error names the file it is in), then
the merged result is checked as a whole (so cross-field rules, like the
efficiency weights summing to 1, see the final values). The resolved
:class:`Recipe` is immutable; :meth:`Recipe.to_dict` is what goes into the
build manifest, and loading that dict back gives the same recipe.

Pruning (``prune:``) has four methods: ``none``; ``unstructured`` (``sparsity``
of the weights zeroed); ``nm`` (the ``pattern`` 2:4 or 4:8); ``structured``
(``structure`` neurons, heads or blocks removed until ``amount`` of the
``scope``'s parameters are gone). Each ranks by ``criterion`` along
``schedule`` (``oneshot`` or ``cubic`` over ``steps``), then ``recovery``
distils the original into the pruned policy until the accuracy budget is met.
``allocation: sensitivity`` (unstructured, one-shot) measures per-layer
sensitivity curves and spreads ``sparsity`` of the scope's parameters, FLOPs
or latency (``allocation_cost``) over the layers where it hurts least.
``prune_shorthand`` turns ``edgevla build --prune 2:4`` and the like into
recipe overrides.

Quantization (``quantize:``) picks a ``format`` — none, w8a8, w8a16, w4a16,
fp16 or fp8 (refused on a target that does not list it) — and how to get
there: ``calibration`` (method, number of batches of the task's calibration
split, or a ``data`` directory of the user's .npz / .safetensors
observations), ``smoothquant`` (on, ``alpha``), int4 ``group_size``,
``tables`` (int8 storage of embeddings and position tables), the
``float_dtype`` of what stays float (``auto``: fp16 where the target runs it),
``mixed_precision`` (layers under an SQNR floor, or the fewest needed to keep
closed-loop success within ``max_loss``, are raised up a precision ladder —
finer int4 groups, int8 weights, float — or kept float), ``qat`` (fake-quant
fine-tuning distilled from the float policy) and ``parity`` (how closely the
ONNX model must match the fake-quant PyTorch one). ``quantize_shorthand``
turns ``edgevla build --quantize w8a8`` into an override of the format.

Closed-loop judgements (``evaluate:``, and every success the build measures
on the way: recovery, sensitivity, mixed precision) run the policy in the
robot's loop the recipe describes: ``execute`` actions of each chunk, each
query's chunk ``latency_ticks`` control ticks late, the robot holding
meanwhile (``schedule: sync``) or executing the previous chunk (``async``);
or ACT's temporal ensembling of every chunk's predictions (``ensemble``,
weights ``exp(-ensemble_m i)``). ``evaluate.tolerance`` measures, after the
gate, how many ticks of latency original and built policy tolerate in each
schedule (``max_ticks: 0``, the default: not measured). ``evaluate.env``
names a user's simulator (``package.module:factory``, Gymnasium's API) to run
all of these in, instead of the tabletop task.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .errors import EdgevlaError
from .schema import (Bool, Either, Float, Int, Invalid, ListOf, Nullable, OneOf, Section, Str, Supported, merge,
                     parse_yaml, read_yaml, validate)

if TYPE_CHECKING:
    from .targets import Target

BACKENDS = ("torch", "onnxruntime")
PRUNE_METHODS = ("none", "unstructured", "nm", "structured")
PRUNE_PATTERNS = ("2:4", "4:8")
PRUNE_STRUCTURES = ("neurons", "heads", "width", "blocks")
PRUNE_CRITERIA = ("magnitude", "taylor", "wanda")
PRUNE_SCHEDULES = ("oneshot", "cubic")
PRUNE_ALLOCATIONS = ("uniform", "sensitivity")
PRUNE_ALLOCATION_COSTS = ("params", "flops", "latency")
PRUNE_SHORTHAND = ("none, 2:4, 4:8, unstructured:S or structured:A[:neurons|heads|width|blocks] "
                   "(S, A fractions in (0, 1))")
QUANTIZE_FORMATS = ("none", "w8a8", "w8a16", "w4a16", "fp16", "fp8")
QUANTIZE_FLOAT_DTYPES = ("auto", "fp16", "bf16", "fp32")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
MIXED_PRECISION_METRICS = ("sqnr", "success")
EFFICIENCY_SUM_TOLERANCE = 1e-6

class NMPattern(OneOf):
    """An N:M pattern; YAML 1.1 reads an unquoted ``2:4`` as the base-60 integer 124, so say so."""

    def check(self, value: Any, path: str, partial: bool = False) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise Invalid(f"{path}: got the number {value}: YAML reads an unquoted N:M as base 60; "
                          f"quote it, like \"2:4\"")
        return super().check(value, path, partial)


RECIPE_SCHEMA = Section({
    # A policy reference (a file or a registered name); --policy overrides it.
    "policy": Nullable(Str()),
    "prune": Section({
        "method": Supported(*PRUNE_METHODS, default="none"),
        "sparsity": Float(0.0, 1.0, max_open=True, default=0.0),  # unstructured: fraction of weights zeroed
        "pattern": NMPattern(*PRUNE_PATTERNS, default="2:4"),          # nm: N of every M input weights kept
        "structure": OneOf(*PRUNE_STRUCTURES, default="neurons"),  # structured: the unit removed
        "amount": Float(0.0, 1.0, max_open=True, default=0.0),    # structured: fraction of scope params removed
        "scope": Nullable(Str(), default="trunk"),  # module path whose layers are pruned; null: every layer
        "criterion": OneOf(*PRUNE_CRITERIA, default="magnitude"),
        "schedule": OneOf(*PRUNE_SCHEDULES, default="oneshot"),
        "steps": Int(1, default=1),                                 # pruning steps of the cubic schedule
        # unstructured: the same sparsity in every layer, or per-layer sparsities from
        # sensitivity curves meeting `sparsity` of the scope's cost (report: table + plot)
        "allocation": OneOf(*PRUNE_ALLOCATIONS, default="uniform"),
        "allocation_cost": OneOf(*PRUNE_ALLOCATION_COSTS, default="params"),
        "sensitivity_episodes": Int(1, default=20),                 # closed-loop episodes per curve point
        "recovery": Section({                                       # distillation from the original policy
            # Hard cases take hundreds of steps (tiny-vla at 98 % unstructured: 550; MuJoCo's reacher at 50 %
            # structured, a tick late: 1050); hopeless ones give up once `patience` evaluations in a row have
            # brought neither the held-out action error 5 % down nor success 5 points up (0: only max_steps
            # ends them).
            "max_steps": Int(0, default=2000),
            "patience": Int(0, default=8),
            "eval_every": Int(1, default=50),
            "episodes": Int(1, default=100),
            "seed": Int(0, default=20_000),  # apart from evaluate.seed: the gate is judged on other episodes
            # A hit on those episodes is confirmed on `confirm_episodes` others (seeds seed + episodes on; null:
            # three times `episodes`) before recovery stops: one evaluation's success is noisy, and the first to
            # meet the budget often a lucky one. Screened on 100, decided on 300: a student 2.3 points short of a
            # 100 % teacher reads within a 1 point margin on 100 episodes one time in three, on 300 one in twelve.
            "confirm": Bool(default=True),
            "confirm_episodes": Nullable(Int(1)),
            # What recovery's success is measured on: `shipped`, the pruned model quantized as the recipe's
            # quantize section says (post-training, the layers mixed precision by SQNR raises raised:
            # what the gate runs unless QAT's weights are kept), so that recovery goes on until the model that
            # ships is within budget; `float`, the pruned float model (quantization then spends what is left of
            # the budget; also what mixed precision by success, searched once after recovery, gets).
            "judge": OneOf("shipped", "float", default="shipped"),
            # What recovery trains: `shipped`, the student quantized once after pruning and trained through its
            # quantizer (straight-through, as QAT): the weights learn the grid they ship on, the activation
            # scales stay as calibrated then, and the model judged is the one that ships (MuJoCo's reacher at
            # 2:4 + w4a16 recovers in 200 steps; trained float, it missed after 2,000); `float`, the pruned
            # float student (judged quantized, it is quantized anew at every evaluation, calibration included,
            # and once more when recovery ends). Recovery trains what it judges: with judge: float, fp16 (no
            # quantized layer) or mixed precision by success (no quantized form before recovery), the float
            # student.
            "train": OneOf("shipped", "float", default="shipped"),
            # null: half the build's accuracy budget. Recovery stops on its own episodes and the gate judges
            # others: a student that only just met the budget on the first often misses it on the second.
            "max_loss": Nullable(Float(0.0, 1.0)),
            "batch_size": Int(1, default=32),
            "lr": Float(0.0, min_open=True, default=3e-4),
            "precision": OneOf("fp32", "bf16", "auto", default="fp32"),
        }),
    }),
    "quantize": Section({
        "format": OneOf(*QUANTIZE_FORMATS, default="none"),
        "float_dtype": OneOf(*QUANTIZE_FLOAT_DTYPES, default="auto"),  # storage of what stays float
        "group_size": OneOf(32, 64, 128, default=128),             # w4a16: input channels per scale
        # int4 weights: gptq rounds each layer to keep its output on the calibration inputs (edgevla.quant.gptq)
        "int4_rounding": OneOf("nearest", "gptq", default="gptq"),
        # awq: input channels of int4 Linears scaled by their activations first (edgevla.quant.awq)
        "int4_scaling": OneOf("none", "awq", default="awq"),
        "tables": Bool(default=True),                               # embeddings / position tables in int8
        "calibration": Section({
            "method": OneOf(*CALIBRATION_METHODS, default="minmax"),
            "percentile": Float(0.0, 100.0, min_open=True, default=99.99),  # for method percentile
            "batches": Int(1, default=8),
            "batch_size": Int(1, default=32),
            "data": Nullable(Str()),  # directory of .npz / .safetensors observations; null: the task's split
        }),
        "smoothquant": Section({
            "enabled": Bool(default=False),
            # auto: each of edgevla.quant.alpha_search.ALPHAS (and none) tried, the best output SQNR kept
            "alpha": Either(Float(0.0, 1.0), OneOf("auto"), default=0.5),
        }),
        "mixed_precision": Section({
            "enabled": Bool(default=False),
            "metric": OneOf(*MIXED_PRECISION_METRICS, default="sqnr"),
            "min_sqnr_db": Float(default=30.0),       # metric sqnr: a layer whose solo SQNR is lower is raised
            # What a layer is raised to. true: up its precision ladder (edgevla.quant.ladder) — w4a16: int4 in
            # finer groups (64, 32), then int8 weights; w8a8 / fp8: int8 weights with a float input — to the
            # first rung that meets the floor, climbing on while the whole model's output misses it (rungs
            # just over the floor add up); metric success: the fewest worst raised to int8 weights, float
            # only if that misses; else float. false: straight to float.
            "ladder": Bool(default=True),
            # The per-layer solo SQNR (the report's column, and metric sqnr) runs one forward per
            # quantized layer over this many calibration samples (the first batch's first ones).
            "sensitivity_samples": Int(1, default=8),
            "max_loss": Nullable(Float(0.0, 1.0)),    # metric success: null: the build's accuracy budget
            "episodes": Int(1, default=100),
            "seed": Int(0, default=30_000),           # apart from evaluate.seed and the prune recovery's
        }),
        "qat": Section({
            "enabled": Bool(default=False),
            "steps": Int(1, default=200),
            "lr": Float(0.0, min_open=True, default=3e-5),
            "batch_size": Int(1, default=32),
        }),
        "parity": Section({  # ONNX Runtime (Q/DQ run literally) vs the fake-quant PyTorch model
            "atol": Float(0.0, default=0.05),
            "min_cosine": Float(0.0, 1.0, default=0.999),
        }),
    }),
    "export": Section({
        "opset": Int(17, 21, default=18),  # 17: TensorRT 8.5 (JetPack 5); 18: the exporter's own
        "dynamic_batch": Bool(default=True),
    }),
    "verify": Section({
        "samples": Int(1, default=64),
        "atol": Float(0.0, default=1e-4),
        "min_cosine": Float(0.0, 1.0, default=0.9999),
    }),
    "evaluate": Section({
        "episodes": Int(1, default=200),
        "seed": Int(0, default=10_000),
        "max_accuracy_loss": Nullable(Float(0.0, 1.0)),  # null: the target's budget
        # How the gate reads the loss (original - built) against that budget: "estimate" fails a build whose
        # measured loss is over it; "confident" also one whose loss's 95 % interval reaches past it (a build
        # shown within the budget, not just measured within; it needs more episodes: 200 rarely show 2 %).
        "gate": OneOf("estimate", "confident", default="estimate"),
        "backends": ListOf(OneOf(*BACKENDS), min_len=1, unique=True, default=["onnxruntime"]),
        # The robot's loop (edgevla.control): actions of each chunk executed, the control ticks a query's
        # chunk comes late (its latency on the robot), and whether the robot holds meanwhile (sync), keeps
        # executing the previous chunk (async), or temporally ensembles every chunk's predictions with
        # weights exp(-ensemble_m i) (ensemble, as ACT). Original and built model are judged alike.
        "execute": Int(1, default=4),
        "latency_ticks": Int(0, default=0),
        "schedule": OneOf("sync", "async", "ensemble", default="sync"),
        "ensemble_m": Float(0.0, default=0.01),
        # A user's simulator in place of the tabletop task (package.module:factory of an environment with
        # Gymnasium's API: edgevla.task.user_env), the steps after which its episode counts as failed, and the
        # noise (action standard deviations) its training rollouts add to the original's actions (DART), and the
        # processes its episodes are stepped in (0: this one; edgevla.task.env_workers).
        "env": Nullable(Str()),
        "env_max_steps": Int(1, default=1000),
        "env_noise": Float(0.0, default=0.0),
        "env_workers": Int(0, default=0),
        # After the gate: success at 0..max_ticks ticks of latency in each schedule, original and built, and the
        # most ticks each keeps the gate's floor (report: latency tolerance). 0: not measured.
        "tolerance": Section({
            "max_ticks": Int(0, default=0),
            "schedules": ListOf(OneOf("sync", "async", "ensemble"), min_len=1, unique=True,
                                default=["sync", "async", "ensemble"]),
        }),
    }),
    "profile": Section({
        "warmup": Int(0, default=20),
        "runs": Int(1, default=200),
        "batch_sizes": ListOf(Int(1), min_len=1, unique=True, default=[1, 4, 16]),
        "backends": ListOf(OneOf(*BACKENDS), min_len=1, unique=True, default=["torch", "onnxruntime"]),
        "threads": Nullable(Int(1)),  # null: all cores
    }),
    # Weights of E(M) = alpha*P/C + beta*P/M + gamma*P/T.
    "efficiency": Section({
        "alpha": Float(0.0, 1.0, default=0.4),
        "beta": Float(0.0, 1.0, default=0.3),
        "gamma": Float(0.0, 1.0, default=0.3),
    }),
})


@dataclass(frozen=True)
class PruneRecoveryConfig:
    max_steps: int
    patience: int
    eval_every: int
    episodes: int
    seed: int
    confirm: bool
    confirm_episodes: int | None
    judge: str
    train: str
    max_loss: float | None
    batch_size: int
    lr: float
    precision: str


@dataclass(frozen=True)
class PruneConfig:
    method: str
    sparsity: float
    pattern: str
    structure: str
    amount: float
    scope: str | None
    criterion: str
    schedule: str
    steps: int
    allocation: str
    allocation_cost: str
    sensitivity_episodes: int
    recovery: PruneRecoveryConfig


@dataclass(frozen=True)
class CalibrationConfig:
    method: str
    percentile: float
    batches: int
    batch_size: int
    data: str | None


@dataclass(frozen=True)
class SmoothQuantConfig:
    enabled: bool
    alpha: float | str  # a number in [0, 1], or "auto"


@dataclass(frozen=True)
class MixedPrecisionConfig:
    enabled: bool
    metric: str
    min_sqnr_db: float
    ladder: bool
    sensitivity_samples: int
    max_loss: float | None
    episodes: int
    seed: int


@dataclass(frozen=True)
class QATConfig:
    enabled: bool
    steps: int
    lr: float
    batch_size: int


@dataclass(frozen=True)
class ParityConfig:
    atol: float
    min_cosine: float


@dataclass(frozen=True)
class QuantizeConfig:
    format: str
    float_dtype: str
    group_size: int
    int4_rounding: str
    int4_scaling: str
    tables: bool
    calibration: CalibrationConfig
    smoothquant: SmoothQuantConfig
    mixed_precision: MixedPrecisionConfig
    qat: QATConfig
    parity: ParityConfig


@dataclass(frozen=True)
class ExportConfig:
    opset: int
    dynamic_batch: bool


@dataclass(frozen=True)
class VerifyConfig:
    samples: int
    atol: float
    min_cosine: float


@dataclass(frozen=True)
class ToleranceConfig:
    max_ticks: int
    schedules: tuple[str, ...]


@dataclass(frozen=True)
class EvaluateConfig:
    episodes: int
    seed: int
    max_accuracy_loss: float | None
    gate: str
    backends: tuple[str, ...]
    execute: int
    latency_ticks: int
    schedule: str
    ensemble_m: float
    env: str | None
    env_max_steps: int
    env_noise: float
    env_workers: int
    tolerance: ToleranceConfig


@dataclass(frozen=True)
class ProfileConfig:
    warmup: int
    runs: int
    batch_sizes: tuple[int, ...]
    backends: tuple[str, ...]
    threads: int | None


@dataclass(frozen=True)
class EfficiencyConfig:
    alpha: float
    beta: float
    gamma: float


@dataclass(frozen=True)
class Recipe:
    """A fully resolved, validated recipe. Build it with :func:`load_recipe` or :meth:`from_dict`."""

    policy: str | None
    prune: PruneConfig
    quantize: QuantizeConfig
    export: ExportConfig
    verify: VerifyConfig
    evaluate: EvaluateConfig
    profile: ProfileConfig
    efficiency: EfficiencyConfig

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "recipe") -> "Recipe":
        """A complete recipe from a mapping; missing keys take the built-in defaults."""
        return _build(_check_whole(validate(RECIPE_SCHEMA, data, where), where))

    @classmethod
    def defaults(cls) -> "Recipe":
        return cls.from_dict({})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): YAML/JSON-ready, loads back to an equal recipe."""
        return _plain(asdict(self))

    def apply_overrides(self, overrides: Mapping[str, Any], where: str = "recipe") -> "Recipe":
        """A new recipe with ``overrides`` on top.

        Keys are dotted paths (``{"profile.runs": 50}``) or nested mappings
        (``{"profile": {"runs": 50}}``); values are checked like a file's.
        """
        layer = validate(RECIPE_SCHEMA, nest_overrides(overrides, where), where, partial=True)
        return Recipe.from_dict(merge(self.to_dict(), layer), where)

    def accuracy_loss_budget(self, target: "Target") -> float:
        """The success-rate drop this build may cost: the recipe's own, else the target's budget."""
        own = self.evaluate.max_accuracy_loss
        return target.budgets.max_accuracy_loss if own is None else own


_SECTIONS = {"prune": PruneConfig, "quantize": QuantizeConfig, "export": ExportConfig, "verify": VerifyConfig,
             "evaluate": EvaluateConfig, "profile": ProfileConfig, "efficiency": EfficiencyConfig}


_NESTED = {(PruneConfig, "recovery"): PruneRecoveryConfig,
           (QuantizeConfig, "calibration"): CalibrationConfig, (QuantizeConfig, "smoothquant"): SmoothQuantConfig,
           (QuantizeConfig, "mixed_precision"): MixedPrecisionConfig, (QuantizeConfig, "qat"): QATConfig,
           (QuantizeConfig, "parity"): ParityConfig, (EvaluateConfig, "tolerance"): ToleranceConfig}


def _build(data: Mapping[str, Any]) -> Recipe:
    def section(cls: type, values: Mapping[str, Any]) -> Any:
        return cls(**{k: section(_NESTED[(cls, k)], v) if (cls, k) in _NESTED
                      else tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return Recipe(policy=data["policy"], **{name: section(cls, data[name]) for name, cls in _SECTIONS.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_whole(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Rules that span fields; only meaningful once all layers are merged."""
    prune = data["prune"]
    method = prune["method"]
    if method == "none" and prune["sparsity"] > 0:
        raise EdgevlaError(f"{where}: prune.sparsity {prune['sparsity']:g} needs a prune method (method is none)")
    for key, owner in (("sparsity", "unstructured"), ("amount", "structured")):
        if prune[key] > 0 and method not in (owner, "none"):
            raise EdgevlaError(f"{where}: prune.{key} {prune[key]:g} is for method {owner}, method is {method}")
        if method == owner and prune[key] == 0:
            raise EdgevlaError(f"{where}: prune.method {owner} needs prune.{key} > 0")
    if prune["allocation"] == "sensitivity" and method != "none" and (method != "unstructured"
                                                                       or prune["schedule"] != "oneshot"):
        raise EdgevlaError(f"{where}: prune.allocation sensitivity is for method unstructured with schedule "
                           f"oneshot, got method {method}, schedule {prune['schedule']}")
    weights = data["efficiency"]
    total = weights["alpha"] + weights["beta"] + weights["gamma"]
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=EFFICIENCY_SUM_TOLERANCE):
        raise EdgevlaError(
            f"{where}: efficiency: alpha + beta + gamma must sum to 1, got {total:g} "
            f"({weights['alpha']:g} + {weights['beta']:g} + {weights['gamma']:g})")
    return data


def prune_shorthand(text: str, where: str = "--prune") -> dict[str, Any]:
    """``--prune`` shorthand to recipe overrides that replace the whole method choice.

    ``none``, ``2:4``, ``4:8``, ``unstructured:0.8`` (weights zeroed),
    ``structured:0.5`` (fraction of the scope's parameters removed; the
    recipe's structure, neurons by default) or ``structured:0.5:blocks``. Every
    method key is set, so a recipe file's ``sparsity`` cannot outlive its method
    (nor its sensitivity ``allocation``, which only unstructured pruning uses).
    """
    word, sep, value = str(text).strip().partition(":")
    structure = None
    if word == "structured" and value.count(":") == 1:
        value, _, structure = value.partition(":")
        if structure not in PRUNE_STRUCTURES:
            raise EdgevlaError(f"{where}: expected {PRUNE_SHORTHAND}, got {text!r}")
    overrides: dict[str, Any] = {"prune.method": "none", "prune.sparsity": 0.0, "prune.amount": 0.0}
    if not sep and word == "none":
        return overrides
    if f"{word}:{value}" in PRUNE_PATTERNS:
        return {**overrides, "prune.method": "nm", "prune.pattern": f"{word}:{value}", "prune.allocation": "uniform"}
    if sep and word in ("unstructured", "structured"):
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if 0.0 < fraction < 1.0:
            if word == "unstructured":  # a recipe's allocation (uniform or sensitivity) still applies
                return {**overrides, "prune.method": word, "prune.sparsity": fraction}
            chosen = {"prune.structure": structure} if structure else {}
            return {**overrides, "prune.method": word, "prune.amount": fraction, "prune.allocation": "uniform",
                    **chosen}
    raise EdgevlaError(f"{where}: expected {PRUNE_SHORTHAND}, got {text!r}")


def quantize_shorthand(text: str, where: str = "--quantize") -> dict[str, Any]:
    """``--quantize`` shorthand (a format name) to the recipe override of ``quantize.format``."""
    value = str(text).strip().lower()
    if value not in QUANTIZE_FORMATS:
        raise EdgevlaError(f"{where}: expected one of {', '.join(QUANTIZE_FORMATS)}, got {text!r}")
    return {"quantize.format": value}


def nest_overrides(overrides: Mapping[str, Any], where: str = "recipe") -> dict[str, Any]:
    """``{"profile.runs": 5}`` -> ``{"profile": {"runs": 5}}``; nested mappings pass through and merge."""
    if not isinstance(overrides, Mapping):
        raise EdgevlaError(f"{where}: overrides must be a mapping, got {type(overrides).__name__}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise EdgevlaError(f"{where}: override key {key!r} is not a dotted name like 'profile.runs'")
        for part in reversed(key.split(".")):
            value = {part: value}
        nested = merge(nested, value)
    return nested


def parse_assignments(assignments: Iterable[str], where: str = "--set") -> dict[str, Any]:
    """CLI ``KEY=VALUE`` strings to an overrides dict; each value is read as YAML (``50``, ``[1, 4]``, ``null``)."""
    out: dict[str, Any] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise EdgevlaError(f"{where}: expected KEY=VALUE like profile.runs=50, got {text!r}")
        out[key.strip()] = parse_yaml(value, f"{where} {key.strip()}")
    return out


def load_recipe(path: str | Path | None, target: "Target | None" = None,
                overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Resolve a recipe: defaults < ``target.recipe`` < the file at ``path`` < ``overrides``.

    ``path`` may be None (no user file). ``target`` may be None (no target layer;
    then ``evaluate.max_accuracy_loss`` must be set before an accuracy gate uses it).
    """
    merged: dict[str, Any] = {}
    if target is not None:
        # Validated when the target was loaded; checked again so a hand-built Target cannot slip through.
        merged = merge(merged, validate(RECIPE_SCHEMA, target.recipe, f"target {target.name}: recipe",
                                        partial=True))
    where = "recipe"
    if path is not None:
        where = f"recipe {path}"
        data = read_yaml(path, where)
        if data is None:  # an empty file changes nothing
            data = {}
        merged = merge(merged, validate(RECIPE_SCHEMA, data, where, partial=True))
    if overrides:
        merged = merge(merged, validate(RECIPE_SCHEMA, nest_overrides(overrides), "recipe", partial=True))
        where = "recipe"
    return Recipe.from_dict(merged, where)
