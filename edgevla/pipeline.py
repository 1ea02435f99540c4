"""``edgevla build``: policy in, verified and profiled bundle out.

The build runs named stages, each timed and reported::

    load      target profile, recipe (defaults < target < file < flags), policy
    analyze   spec, parameters, FLOPs per layer; held-out observations
    compress  pruning (recipe prune:) of a copy, recovery by distillation, masks baked to zeros;
              then quantization (recipe quantize:) of the result into a fake-quant model
    export    ONNX of the built model (and of the original, for side-by-side numbers), Q/DQ when
              quantized and then linted against TensorRT's rules; per-layer precision, sparsity
              and pattern measured on the exported initializers
    verify    ONNX Runtime vs PyTorch on held-out observations: max abs error, cosine (for a
              quantized model: the Q/DQ graph run literally vs the fake-quant model)
    evaluate  closed-loop success of the exported model vs the original policy: the accuracy gate
    profile   latency, jitter, deadline misses, throughput, peak memory, roofline estimate
    bundle    manifest + model.onnx + weights + report, written atomically

A failed gate raises :class:`~edgevla.errors.GateFailed` and writes no bundle.
Every stage works on any ``nn.Module`` that declares a :class:`PolicySpec`;
the closed-loop stage needs a task that speaks the policy's observations:
the tabletop task, or the user's own simulator (``evaluate.env``, Gymnasium's
API: :mod:`edgevla.task.user_env`), whose demonstrations are the original
policy's rollouts. A policy with neither gets tensor checks and action error,
and the report says that success was not measured.

Pruning touches the layers under ``prune.scope`` (a module path, ``trunk`` by
default; null for every layer): N:M and unstructured masks go on its
``nn.Linear`` weights (N:M on those whose input width divides by M),
structured pruning removes neurons, heads or blocks found under it by the
dependency analysis, with kept channels rounded to the target's
``preferred_channel_multiple``. Recovery distils the original policy into
the pruned one on the task's demonstrations until closed-loop success is
within half the budget (``prune.recovery.max_loss``) on episodes seeded apart
from the gate's, a margin for the gate's other episodes; a build that also
quantizes has recovery judge the student as it will ship, quantized
(``prune.recovery.judge``), and with ``prune.recovery.train: shipped``
quantize it once after pruning and train that model through its quantizer
(straight-through, the pruned zeros held): the build then ships the model
recovery trained and judged; without a task there is no recovery and the
report says so. Structured pruning changes layer
shapes, so a VLA's config no longer describes the weights: the manifest
records each layer's shape, and ``edgevla eval --backend torch`` refuses such
a bundle (ONNX Runtime runs it).

Quantization (:func:`quantize_for_build`) works on the float, possibly pruned
model: calibration on the task's calibration split (or the user's
observation files), optional SmoothQuant, every ``nn.Linear`` and convolution
quantized (a BatchNorm after a convolution folded into it first) and
each one's solo output SQNR measured; mixed precision raises the layers that
break the SQNR floor or the success budget up a precision ladder (finer int4
groups, int8 weights with a float input, float: :mod:`edgevla.quant.ladder`),
and the ONNX metadata names them so runtimes keep their input float; optional QAT
distils the float policy into the fake-quant model. Exact zeros stay zero
throughout, so 2:4 survives. The built model is then the fake-quant PyTorch
model — the reference the Q/DQ ONNX file is verified against — and the
manifest's ``layers`` say what each weight ships as (int8, int4, fp8, fp16).
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from .backends import Runner, make_runner
from .bundle import make_manifest, save_weights, write_bundle
from .errors import EdgevlaError, GateFailed
from .metrics.efficiency import roofline_estimate
from .metrics.flops import FlopReport, flop_report
from .metrics.latency import deadline_misses, measure_latency, throughput
from .metrics.memory import measure_peak_memory
from .metrics.params import count_parameters, file_size
from .metrics.report import ModelMetrics, build_report, host_info, write_report
from .metrics.success_ci import success_uncertainty, uncertainty_said
from .models.zoo import LoadedPolicy, load_policy
from .original_memo import OriginalMemo, fingerprint
from .progress import Progress
from .recipe import (CalibrationConfig, EvaluateConfig, MixedPrecisionConfig, PruneConfig, QuantizeConfig, Recipe,
                     load_recipe)
from .spec import PolicySpec, spec_of
from .targets import Target, bandwidth_bytes_per_s, load_target, roofline_peak
from .task import ClosedLoopTask, EvalResult, TaskConfig, evaluate
from .task.evaluate import meets
from .task.tolerance import ToleranceCurve, latency_tolerance, loop_of, tolerated_said

if TYPE_CHECKING:
    from .quant import QuantizeResult

DEFAULT_POLICY = "tiny-vla"
STAGES = ("load", "analyze", "compress", "export", "verify", "evaluate", "profile", "bundle")


@dataclass
class BuildRequest:
    target: str
    policy: str | None = None
    recipe: str | None = None
    output: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # dotted recipe keys, e.g. {"evaluate.episodes": 50}
    allow_pickle: bool = False
    # The original policy's ONNX, closed-loop results and rollouts, shared with other builds of it (a search's).
    memo: OriginalMemo | None = None


@dataclass
class BuildResult:
    bundle: Path
    report: dict[str, Any]
    stage_seconds: dict[str, float]


# --------------------------------------------------------------------------- helpers


def task_for(spec: PolicySpec, ev: EvaluateConfig | None = None) -> ClosedLoopTask | None:
    """The closed-loop task for ``spec``: the user's simulator where ``ev.env`` names one, else the tabletop
    task configured for ``spec``, or None when the spec is not the task's."""
    if ev is not None and ev.env is not None:
        from .task.user_env import EnvTask

        return EnvTask(ev.env, spec, max_steps=ev.env_max_steps, execute=ev.execute, noise=ev.env_noise,
                       workers=ev.env_workers)
    obs = {o.name: o for o in spec.observations}
    if set(obs) != {"image", "instruction", "state"} or spec.action_dim != 2:
        return None
    img, text, state = obs["image"].shape, obs["instruction"].shape, obs["state"].shape
    if len(img) != 4 or img[1] != 3 or img[2] != img[3] or len(text) != 1 or state != (2,):
        return None
    return TaskConfig(image_size=img[2], n_cameras=img[0], chunk_size=spec.chunk_size, text_len=text[0])


def with_demonstrator(task: ClosedLoopTask | None, original: torch.nn.Module) -> ClosedLoopTask | None:
    """``task``, a simulator's with the original policy as its demonstrator (its rollouts are the data the
    tabletop task's expert gives)."""
    if task is not None and not task.expert:
        task.demonstrator = action_fn(make_runner("torch", policy=original))
    return task


def heldout_observations(spec: PolicySpec, n: int, seed: int = 0,
                         task: ClosedLoopTask | None = None) -> dict[str, np.ndarray]:
    """Held-out observations: the task's held-out split (``task``, else the tabletop task where it speaks
    ``spec``), else random inputs inside the spec's ranges."""
    task = task if task is not None else task_for(spec)
    if task is not None:
        return task.split("heldout", n, seed).observations
    return spec.example(batch=n, seed=10_000 + seed)


def first_observations(task: ClosedLoopTask, episodes: int, seed: int, batch: int = 50) -> dict[str, np.ndarray]:
    """The first observation of each of the evaluator's episodes (seeded as :func:`~edgevla.task.evaluate` seeds
    them, ``batch`` at a time)."""
    parts = [task.batch_env(min(batch, episodes - start), seed + start).observe() for start in range(0, episodes, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def batch_of(obs: Mapping[str, np.ndarray], start: int, size: int) -> dict[str, np.ndarray]:
    """``size`` rows starting at ``start`` (wrapping around), so any batch size can be drawn."""
    n = len(next(iter(obs.values())))
    idx = (np.arange(size) + start) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in obs.items()}


def action_fn(runner: Runner):
    """A runner as the closed-loop evaluator wants it: obs -> real actions."""
    return lambda obs: runner.spec.denormalize(runner(obs))


def robot_loop(ev: EvaluateConfig | None) -> dict[str, Any]:
    """The evaluator's settings for the robot's loop the recipe describes (chunk actions executed, latency in
    control ticks, schedule): every closed-loop judgement of a build (gate, recovery, sensitivity, mixed
    precision) runs in the same loop."""
    if ev is None:
        return {}
    return loop_of(ev.schedule, ev.latency_ticks, ev.execute, ev.ensemble_m)


def torch_success(model: torch.nn.Module, task: ClosedLoopTask, episodes: int, seed: int,
                  loop: EvaluateConfig | None) -> float:
    """Closed-loop success of a PyTorch model in the recipe's robot loop."""
    from .train import torch_action_fn

    return evaluate(torch_action_fn(model), task, episodes=episodes, seed=seed, **robot_loop(loop)).success_rate


def _ticks_tolerated(curve: ToleranceCurve) -> str:
    return (f"{tolerated_said(curve.tolerated, curve.probed_to_the_end)} "
            f"({' '.join(f'{s:.1%}' for s in curve.success)} from 0 ticks)")


def resolve_output(output: str | None, policy_name: str, target: Target) -> Path:
    """The bundle path, checked before any slow work starts."""
    out = Path(output) if output else Path("bundles") / f"{policy_name}-{target.name}"
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise EdgevlaError(f"output {out} exists and is a file; give a directory path")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgevlaError(f"output {out}: {parent} is not a directory")
    import os

    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgevlaError(f"output {out}: cannot write in {parent}")
    return out


def layer_table(policy: torch.nn.Module, onnx_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Precision, shape, sparsity and pattern of every weight-bearing layer, as the manifest records them.

    With ``onnx_path`` each weight is read back from the exported graph's
    initializer (transposed back where the exporter folded it into a MatMul),
    so the figures describe what ships: an fp16 initializer reports fp16, the
    int8 / int4 / fp8 codes of a quantized weight (``<param>_quantized``, the
    Q/DQ exporter's name) report int8 / int4 / fp8, and sparsity counts zero
    codes. A weight the graph folded away is measured on the PyTorch side.
    Quantized layers also carry their ``format`` (w8a8, ...) and, for int4,
    their ``group_size``.
    """
    exported: dict[str, tuple[np.ndarray, str]] = {}
    if onnx_path is not None:
        import onnx

        from .export import match_initializers

        model = onnx.load(str(onnx_path))
        stored = _stored_weights(model)
        float_refs = None
        for name, mod in policy.named_modules():
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or w.ndim < 2:
                continue
            key = f"{name}.weight"
            if key in stored:
                exported[key] = stored[key]
            elif f"{key}.T" in stored:
                array, precision = stored[f"{key}.T"]
                exported[key] = (array.T, precision)
            else:  # another exporter's naming: find the float parameter by value
                if float_refs is None:
                    from onnx import numpy_helper

                    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
                    float_refs = {n: (arrays[r.name].T if r.transposed else arrays[r.name])
                                  for n, r in match_initializers(model, policy).items()}
                if key in float_refs:
                    exported[key] = (float_refs[key], _PRECISION_OF_DTYPE.get(str(float_refs[key].dtype), "fp32"))
    rows = []
    for name, mod in policy.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim < 2:
            continue
        key = f"{name}.weight"
        if key in exported:
            array, precision = exported[key]
            w = torch.from_numpy(np.array(array, dtype=np.float32))
        else:
            w = w.detach()
            precision = str(w.dtype).replace("torch.float", "fp")
        row = {"name": name, "precision": precision, "shape": list(w.shape), **weight_sparsity(w)}
        fmt = getattr(mod, "format_name", None)
        if fmt is not None and fmt != "float":
            row["format"] = fmt
            if getattr(mod, "group_size", None):
                row["group_size"] = int(mod.group_size)
        rows.append(row)
    return rows


_PRECISION_OF_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8", "int4": "int4",
                       "float8_e4m3fn": "fp8", "float64": "fp64"}
_QUANTIZED_SUFFIX = "_quantized"


def _stored_weights(model) -> dict[str, tuple[np.ndarray, str]]:
    """``{initializer base name: (values as stored, precision)}``: float initializers under their own name,
    quantized codes (int8, int4, fp8) under the name of the float initializer they replaced."""
    from onnx import TensorProto, numpy_helper

    kinds = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
             TensorProto.INT8: "int8", TensorProto.INT4: "int4", TensorProto.FLOAT8E4M3FN: "fp8"}
    out: dict[str, tuple[np.ndarray, str]] = {}
    for init in model.graph.initializer:
        precision = kinds.get(init.data_type)
        if precision is None:
            continue
        name = init.name
        if name.endswith(_QUANTIZED_SUFFIX) and precision in ("int8", "int4", "fp8"):
            name = name[: -len(_QUANTIZED_SUFFIX)]
        elif precision in ("int8", "int4", "fp8"):
            continue  # zero points and other integer constants
        out[name] = (numpy_helper.to_array(init).astype(np.float32), precision)
    return out


def weight_sparsity(weight: torch.Tensor) -> dict[str, Any]:
    """Fraction of exact zeros and the pattern they follow: dense, 2:4, 4:8 (every group of the
    input dimension obeys it) or unstructured."""
    from .prune import follows_nm

    zeros = int((weight == 0).sum())
    if zeros == 0:
        pattern = "dense"
    else:
        pattern = next((f"{n}:{m}" for n, m in ((2, 4), (4, 8)) if follows_nm(weight, n, m)), "unstructured")
    return {"sparsity": round(zeros / weight.numel(), 6), "pattern": pattern}


def float_dtypes_below_fp32(policy: torch.nn.Module) -> list[str]:
    """The narrower float dtypes (bfloat16, float16) among the policy's parameters and buffers, by name: a
    policy trained or saved in half precision, which the build runs as float32."""
    found = {t.dtype for t in (*policy.parameters(), *policy.buffers())
             if t.is_floating_point() and t.dtype in (torch.bfloat16, torch.float16)}
    return sorted(str(d).removeprefix("torch.") for d in found)


def check_policy_runs(policy: torch.nn.Module, spec: PolicySpec, obs: Mapping[str, np.ndarray]) -> None:
    """Run the policy once on observations shaped as its spec declares; one-line error if it can't."""
    args = [torch.from_numpy(obs[n]) for n in spec.input_names]
    try:
        with torch.inference_mode():
            out = policy(*args)
    except Exception as e:  # the user's forward: any failure means spec and model disagree
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgevlaError(f"the policy does not run on observations shaped as its spec declares "
                           f"({', '.join(f'{n}{tuple(obs[n].shape)}' for n in spec.input_names)}): {first}") from None
    expected = (len(args[0]), *spec.action.shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EdgevlaError(f"the policy returned {got}, its spec declares actions of shape {expected}")


def accuracy_gate(before: float, after: float, max_loss: float,
                  loss_ci95: tuple[float, float] | None = None, confident: bool = False) -> None:
    """Fail the build when closed-loop success dropped by more than ``max_loss`` (fractions); the message gives
    the loss's 95 % interval where it is known. ``confident``: fail it too when that interval reaches past
    ``max_loss`` (recipe ``evaluate.gate: confident``)."""
    # confident: the budget must reach the interval's top too (meets: compared up to rounding, as a rate)
    if confident and loss_ci95 is not None and meets(after, before - max_loss) and \
            not meets(max_loss, loss_ci95[1]):
        raise GateFailed(f"accuracy gate (confident): success went from {before:.1%} to {after:.1%}, but the "
                         f"loss's 95 % interval ({loss_ci95[0]:.1%} to {loss_ci95[1]:.1%}) reaches past the "
                         f"{max_loss:.1%} the recipe/target allows; more episodes (evaluate.episodes) narrow it")
    if not meets(after, before - max_loss):
        interval = "" if loss_ci95 is None else (
            f" (95 % interval of the loss: {loss_ci95[0]:.1%} to {loss_ci95[1]:.1%}"
            + ("; more episodes, evaluate.episodes, would tell whether it is really over)"
               if loss_ci95[0] <= max_loss else ")"))
        raise GateFailed(f"accuracy gate: success fell from {before:.1%} to {after:.1%}, "
                         f"more than the {max_loss:.1%} the recipe/target allows{interval}")


def roofline_for(flops: FlopReport, target: Target, precision: str = "fp32") -> Any:
    """Floor latency on ``target`` from this model's per-layer FLOPs and weight bytes (an estimate)."""
    try:
        peak = roofline_peak(target, precision)
    except EdgevlaError:
        return None
    return roofline_estimate([(r.flops, r.weight_bytes) for r in flops.per_layer], peak, bandwidth_bytes_per_s(target))


# --------------------------------------------------------------------------- pruning


def prune_scope_layers(policy: torch.nn.Module, scope: str | None, divisible_by: int = 1, *,
                       convolutions: bool = True) -> list[str]:
    """Names of the layers to mask under ``scope`` (every one when None): nn.Linear and (``convolutions``)
    nn.Conv1d/2d/3d, whose input width (a convolution's: input channels per group) divides."""
    from .prune import PRUNABLE, takes_nm

    kinds = PRUNABLE if convolutions else torch.nn.Linear
    names = [n for n, m in policy.named_modules() if isinstance(m, kinds)
             and (scope is None or n.startswith(scope + ".")) and takes_nm(m, divisible_by)]
    if not names:
        where = f"under prune.scope {scope!r}" if scope else "in it"
        extra = f" with an input width divisible by {divisible_by}" if divisible_by > 1 else ""
        layer = "nn.Linear or convolution" if convolutions else "nn.Linear"
        raise EdgevlaError(f"{type(policy).__name__} has no {layer} layer{extra} {where}; set prune.scope to "
                           "one of its module paths, or null for the whole policy")
    return names


def convolutions_among(policy: torch.nn.Module, names: list[str]) -> int:
    modules = dict(policy.named_modules())
    return sum(not isinstance(modules[n], torch.nn.Linear) for n in names)


def layers_said(count: int, convolutions: int) -> str:
    """"12 Linear layers", or "14 layers (3 convolutions)": what a mask-pruning report line counts."""
    if not convolutions:
        return f"{count} Linear layers"
    return f"{count} layers ({convolutions} convolution{'s' if convolutions > 1 else ''})"


def scope_parameters(policy: torch.nn.Module, scope: str | None) -> int:
    return sum(p.numel() for n, p in policy.named_parameters() if scope is None or n.startswith(scope + "."))


def normalized_batch(spec: PolicySpec, observations: Mapping[str, np.ndarray], actions: np.ndarray):
    """(observation tensors in input order, expert actions normalized as the policy predicts them)."""
    mean = np.asarray(spec.action_mean, np.float32)
    std = np.asarray(spec.action_std, np.float32)
    obs = [torch.from_numpy(np.ascontiguousarray(observations[n])) for n in spec.input_names]
    return obs, torch.from_numpy(((actions - mean) / std).astype(np.float32))


def calibration_batches(policy: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None,
                        criterion: str, n: int = 4, size: int = 32) -> list:
    """Batches that Taylor, Wanda and block scoring see: the task's calibration split (with the tabletop's
    expert actions; a simulator's are the policy's own), else in-range random observations with the policy's
    own actions (enough for activation statistics, not for gradients: Taylor needs an expert)."""
    if criterion == "taylor" and not getattr(task, "expert", False):
        where = ("a simulator's demonstrations are the policy's own actions" if task is not None
                 else "no task speaks this policy's observations")
        raise EdgevlaError(f"prune.criterion taylor needs expert actions from a task, and {where}: "
                           "use magnitude or wanda")
    if task is None:
        batches = []
        for i in range(n):
            obs = spec.example(batch=size, seed=30_000 + i)
            args = [torch.from_numpy(obs[k]) for k in spec.input_names]
            with torch.no_grad():
                batches.append((args, policy(*args).float()))
        return batches
    if task.expert:  # the tabletop task: n batches drawn in turn from its calibration split's stream
        from .task.dataset import make_batch, split_rng

        rng = split_rng("calibration", 0)
        return [normalized_batch(spec, b.observations, b.actions)
                for b in (make_batch(task, size, rng) for _ in range(n))]
    data = task.split("calibration", n * size)
    return [normalized_batch(spec, {k: v[i * size:(i + 1) * size] for k, v in data.observations.items()},
                             data.actions[i * size:(i + 1) * size]) for i in range(n)]


def structured_amount(policy: torch.nn.Module, structure: str, amount: float, scope: str | None, round_to: int,
                      example_inputs):
    """The structured pass's amount (units) that removes ``amount`` of the scope's parameters: one fraction of
    every group's units, or a fraction per group where one for all would overshoot (prune/parameter_goal.py).

    Blocks: the fraction of the residual blocks whose removal reaches the goal.
    """
    from .prune import DependencyGraph, residual_blocks
    from .prune.parameter_goal import amount_for_parameters

    total = scope_parameters(policy, scope)
    where = f"under prune.scope {scope!r}" if scope else "in the whole policy"
    if structure == "blocks":
        goal = amount * total
        blocks = [b for b in residual_blocks(policy, example_inputs) if scope is None or b.startswith(scope + ".")]
        if not blocks:
            raise EdgevlaError(f"{type(policy).__name__} has no residual blocks {where}")
        size = max(sum(p.numel() for p in policy.get_submodule(b).parameters()) for b in blocks)
        count = max(1, math.ceil(goal / size - 1e-9))
        if count >= len(blocks):
            raise EdgevlaError(f"structured pruning of blocks can remove at most {len(blocks) - 1} of the "
                               f"{len(blocks)} blocks {where}; {amount:.0%} of the parameters needs {count}")
        return count / len(blocks)
    return amount_for_parameters(DependencyGraph(policy, example_inputs), structure, amount, total, scope, round_to)


#: The original's result ``what`` with ``settings``: computed by ``make()``, or kept from a build before
#: (:meth:`Build._original_memo`).
OriginalResult = Callable[[str, tuple, Callable[[], Any]], Any]


def prune_policy(policy: torch.nn.Module, teacher: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None,
                 cfg: PruneConfig, *, round_to: int, max_loss: float, progress: Progress,
                 loop: EvaluateConfig | None = None, original: OriginalResult | None = None,
                 shipped: ShippedForm | None = None) -> tuple[dict[str, Any], QuantizedStudent | None]:
    """Prune ``policy`` in place as ``cfg`` says, recover it from ``teacher``, bake the masks; returns the
    report and, when recovery trained the quantized student, that student.

    With ``shipped`` (and ``prune.recovery.judge: shipped``) recovery measures
    the student's success on ``shipped.of(student)``, the model that will
    ship, and trains on until that one is within budget. With
    ``prune.recovery.train: shipped`` it quantizes the pruned student once and
    trains that through its quantizer (straight-through, exact zeros held),
    judging it as it ships (:func:`~edgevla.quant.settled_copy`); the float
    ``policy`` is left pruned and untrained, and the trained quantized student
    is returned to be the build's model. Raises
    :class:`~edgevla.prune.RecoveryFailed` (a failed gate) when distillation
    cannot bring success back within budget.
    """
    import contextlib
    import functools
    import time

    from .prune import distill, gradual_prune, recover, remove_masks, RecoveryConfig, RecoveryFailed
    from .quant import qat_mode, quantized_layers, settle, settled_copy, zeros_held
    from .prune.parameter_goal import amount_said
    from .prune.structured import _example_inputs

    scope = cfg.scope
    if scope is not None and scope not in dict(policy.named_modules()):
        top = ", ".join(name for name, _ in policy.named_children())
        raise EdgevlaError(f"prune.scope {scope!r} is not a module of {type(policy).__name__} (its modules: {top}); "
                           "name one with --set prune.scope=PATH, or --set prune.scope=null to prune every layer")
    params_before, scope_before = scope_parameters(policy, None), scope_parameters(policy, scope)
    calibration = (calibration_batches(teacher, spec, task, cfg.criterion)
                   if cfg.criterion != "magnitude" or cfg.method == "structured" else None)
    rc = cfg.recovery
    config = RecoveryConfig(max_steps=rc.max_steps, patience=rc.patience, eval_every=rc.eval_every,
                            eval_episodes=rc.episodes, eval_seed=rc.seed, batch_size=rc.batch_size, lr=rc.lr,
                            precision=rc.precision,
                            max_loss=max_loss / 2 if rc.max_loss is None else rc.max_loss)
    config.check()
    batches = None
    if task is not None:
        batches = (normalized_batch(spec, b.observations, b.actions) for b in task.stream(rc.batch_size, seed=rc.seed))
    steps = 1 if cfg.schedule == "oneshot" else cfg.steps

    def finetune(model: torch.nn.Module, step: int) -> None:
        # Between the steps of a gradual schedule; after the last one, recovery takes over.
        if batches is not None and step < steps:
            distill(model, teacher, rc.eval_every, config, batches)

    start = time.perf_counter()
    info: dict[str, Any] = {"method": cfg.method, "criterion": cfg.criterion, "schedule": cfg.schedule,
                            "steps": steps, "scope": scope}
    if cfg.method == "structured":
        inputs = _example_inputs(policy, None)
        units = structured_amount(policy, cfg.structure, cfg.amount, scope, round_to, inputs)
        result = gradual_prune(policy, cfg.structure, units, steps, schedule=cfg.schedule,
                               criterion=cfg.criterion, calibration=calibration, structure_scope=scope,
                               round_to=round_to, example_inputs=inputs, finetune=finetune)
        units = {name: round(f, 4) for name, f in units.items()} if isinstance(units, Mapping) else round(units, 4)
        info.update(structure=cfg.structure, amount=cfg.amount, round_to=round_to, unit_fraction=units)
        what = f"{cfg.structure} ({amount_said(units)}, kept channels multiples of {round_to})"
    elif cfg.allocation == "sensitivity":
        layers = prune_scope_layers(policy, scope, 1, convolutions=False)  # the sweep times Linear layers
        result, sensitivity = sensitivity_prune(policy, teacher, spec, task, cfg, layers, calibration, loop)
        info.update(layers=layers, pattern=None, sparsity=cfg.sparsity, sensitivity=sensitivity)
        what = (f"unstructured on {len(layers)} Linear layers, per-layer sparsity from sensitivity "
                f"({cfg.sparsity:.0%} of their {cfg.allocation_cost})")
    else:
        m = int(cfg.pattern.split(":")[1]) if cfg.method == "nm" else 1
        layers = prune_scope_layers(policy, scope, m)
        method = cfg.pattern if cfg.method == "nm" else "unstructured"
        result = gradual_prune(policy, method, cfg.sparsity if cfg.method == "unstructured" else None, steps,
                               schedule=cfg.schedule, criterion=cfg.criterion, calibration=calibration,
                               layers=layers, finetune=finetune)
        info.update(layers=layers, convolutions=convolutions_among(policy, layers),
                    pattern=cfg.pattern if cfg.method == "nm" else None, sparsity=result.final)
        what = f"{method} on {layers_said(len(layers), info['convolutions'])}"
    info["prune_seconds"] = round(time.perf_counter() - start, 3)
    info["schedule_steps"] = result.table()
    info["params_before"], info["params_after"] = params_before, scope_parameters(policy, None)
    info["scope_params_before"], info["scope_params_after"] = scope_before, scope_parameters(policy, scope)
    info["scope_zero_weights"] = sum(int((m.weight == 0).sum()) for n, m in policy.named_modules()
                                     if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2
                                     and (scope is None or n.startswith(scope + ".")))
    removed = scope_before - info["scope_params_after"]
    progress.note(f"pruned {what} {f'under {scope!r}' if scope else 'in the whole policy'}: {removed:,} of "
                  f"{scope_before:,} parameters removed ({removed / scope_before:.1%}), "
                  f"{info['scope_zero_weights']:,} weights zero, in {info['prune_seconds']:.1f} s")
    trained: QuantizedStudent | None = None
    if task is None:
        info["recovery"] = "not run: no closed-loop task speaks this policy's observations"
        progress.note(f"recovery {info['recovery']}")
    else:
        heldout = task.split("heldout", config.heldout_samples, config.seed)
        judged = shipped if rc.judge == "shipped" else None
        confirm_episodes = 3 * rc.episodes if rc.confirm_episodes is None else rc.confirm_episodes
        student, as_shipped = policy, (judged.of if judged else None)
        if judged is not None and rc.train == "shipped" and judged.trainable:
            trained = judged.quantize(policy)
            if quantized_layers(trained.result.model):
                student = trained.result.model
                as_shipped = functools.partial(settled_copy, float_dtype=judged.float_dtype, tables=judged.tables)
            else:  # no layer the format quantizes: nothing to train through
                trained = None

        def success_on(seed: int, episodes: int) -> Callable[[torch.nn.Module], float]:
            """Success on ``episodes`` episodes from ``seed``; the teacher's kept where ``original`` keeps it."""
            def success(p: torch.nn.Module) -> float:
                if p is not teacher:
                    return torch_success(as_shipped(p) if as_shipped else p, task, episodes, seed, loop)
                if original is None:
                    return torch_success(p, task, episodes, seed, loop)
                return original("recovery_success", (task.key, episodes, seed,
                                                     tuple(sorted(robot_loop(loop).items()))),
                                lambda: torch_success(p, task, episodes, seed, loop))
            return success

        what = "the pruned float model" if judged is None else judged.said(trained=trained is not None)
        try:
            with contextlib.ExitStack() as training:
                if trained is not None:  # straight-through fake quantization, the baked masks' zeros held
                    training.enter_context(qat_mode(student))
                    training.enter_context(zeros_held(student))
                report = recover(student, teacher, config, batches=batches,
                                 heldout=normalized_batch(spec, heldout.observations, heldout.actions),
                                 success_fn=success_on(rc.seed, rc.episodes),
                                 confirm_fn=success_on(rc.seed + rc.episodes, confirm_episodes) if rc.confirm
                                 else None)
        except RecoveryFailed as e:
            if judged is None:
                raise
            other = ("prune.recovery.train: float trains the float model" if trained else
                     "prune.recovery.judge: float measures the float model")
            if trained is None and rc.train == "float" and judged.trainable:
                other = f"prune.recovery.train: shipped trains it quantized, through its quantizer; {other}"
            raise RecoveryFailed(f"{e}; the student's success measured {what}, as it will ship ({other})",
                                 e.report) from None
        if trained is not None:
            settle(student, judged.float_dtype, judged.tables)
            trained.trained_steps = report.steps
        info["recovery"] = {**report.to_dict(), "judged": what,
                            "trained": "the quantized student" if trained else "the pruned float model",
                            "confirm_episodes": confirm_episodes if rc.confirm else 0}
        progress.note(f"recovery by distillation: {recovery_said(info['recovery'])}")
    remove_masks(policy)  # exact zeros in plain weights: what export and the bundle's weights hold
    return info, trained


def recovery_said(rec: Mapping[str, Any]) -> str:
    """A recovery's course in a sentence, from its report entry: the build's console and report.md say it."""
    confirmed = "" if not rec["confirmations"] else (
        f"; the hit confirmed at {rec['confirmations'][-1]['success']:.1%} on {rec['confirm_episodes']} other "
        f"episodes (original {rec['teacher_confirm_success']:.1%})"
        + (f", after {len(rec['confirmations']) - 1} hit(s) not borne out there"
           if len(rec["confirmations"]) > 1 else ""))
    judged = f"the student {rec['judged']}" if rec["judged"].startswith("quantized") else rec["judged"]
    trained = (f"{rec['train_seconds']:.1f} s of training ({rec['samples_per_s']:.0f} samples/s, "
               f"{rec['seconds_per_epoch']:.1f} s per {rec['epoch_samples']:,}-sample epoch), " if rec["steps"]
               else "no training needed, ")
    return (f"success measured on {judged}: {rec['before']['success']:.1%} after pruning, "
            f"{rec['after']['success']:.1%} after {rec['steps']} steps (original {rec['teacher_success']:.1%} on the "
            f"same episodes, allowed loss {rec['max_loss']:.1%}){confirmed}; {trained}"
            f"{rec['eval_seconds']:.1f} s of evaluation.")


def pruning_markdown(info: Mapping[str, Any]) -> str:
    """The report.md section of a pruned build: what was pruned, and how recovery brought success back."""
    if info["method"] == "structured":
        from .prune.parameter_goal import amount_said

        what = (f"structured, {info['structure']}: {info['amount']:.0%} of the scope's parameters "
                f"({amount_said(info['unit_fraction'])}, kept channels multiples of {info['round_to']})")
    elif "sensitivity" in info:
        what = f"unstructured, per-layer sparsity from sensitivity curves on {len(info['layers'])} Linear layers"
    else:
        what = (f"{info['pattern'] or 'unstructured'} on {layers_said(len(info['layers']), info['convolutions'])}, "
                f"{info['sparsity']:.1%} of their weights zero")
    where = f"under `{info['scope']}`" if info["scope"] else "in the whole policy"
    removed = info["scope_params_before"] - info["scope_params_after"]
    steps = "" if info["steps"] == 1 else f" over {info['steps']} steps"
    out = ["", "## Pruning", "",
           f"**{what}** {where} ({info['criterion']} importance, {info['schedule']} schedule{steps}): "
           + (f"{removed:,} of its {info['scope_params_before']:,} parameters removed; parameters "
              f"{info['params_before']:,} → {info['params_after']:,}." if removed else
              f"{info['scope_zero_weights']:,} of its {info['scope_params_before']:,} parameters zero."), ""]
    rec = info.get("recovery")
    if not isinstance(rec, Mapping):
        return "\n".join(out + [f"Recovery {rec}.", ""])
    out += [f"Recovery by distillation from the original, {recovery_said(rec)}", ""]
    if len(rec["history"]) > 1:
        out += ["| step | success | action MSE vs original | vs expert |", "|---:|---:|---:|---:|"]
        out += [f"| {e['step']} | {e['success']:.1%} | {e['action_error']:.3e} | {e['expert_error']:.3e} |"
                for e in rec["history"]]
        out.append("")
    return "\n".join(out)


def write_sensitivity(section: Mapping[str, Any], report_dir: Path) -> Path:
    """The report's sensitivity plot and report.md table (allocated sparsity and curve per layer)."""
    from .prune import SensitivityResult, plot_sensitivity

    curves = SensitivityResult.from_dict(section)
    plot = plot_sensitivity(curves, report_dir / "sensitivity.png")
    grid = curves.curves[0].sparsities if curves.curves else []
    out = ["", "## Pruning sensitivity", "",
           f"Per-layer sparsity allocated from sensitivity curves: {section['target']:.0%} of the layers' "
           f"{section['cost']} removed where the action error grows least (achieved {section['achieved']:.1%}; "
           f"{section['weights_zeroed']:.1%} of their weights zeroed). Success over {section['episodes']} "
           f"episodes with only that layer pruned (unpruned {curves.base_success:.0%}); plot: "
           f"[sensitivity.png](sensitivity.png).", "",
           "| layer | params | latency µs | allocated | " + " | ".join(f"success @{s:.0%}" for s in grid)
           + " | " + " | ".join(f"action MSE @{s:.0%}" for s in grid) + " |",
           "|---|---:|---:|---:|" + "---:|" * (2 * len(grid))]
    for c in curves.curves:
        out.append(f"| {c.unit} | {c.params:,} | {c.latency_us:.1f} | {section['layer_sparsity'][c.unit]:.1%} | "
                   + " | ".join(f"{v:.0%}" for v in c.success) + " | "
                   + " | ".join(f"{v:.2e}" for v in c.action_error) + " |")
    with open(report_dir / "report.md", "a", encoding="utf-8") as md:
        md.write("\n".join(out) + "\n")
    return plot


def sensitivity_prune(policy: torch.nn.Module, teacher: torch.nn.Module, spec: PolicySpec,
                      task: ClosedLoopTask | None, cfg: PruneConfig, layers: list[str], calibration,
                      loop: EvaluateConfig | None = None):
    """Mask ``policy`` with per-layer sparsities allocated from its sensitivity curves.

    Each layer is pruned alone to 25 / 50 / 75 / 90 % and measured (closed-loop
    success on ``cfg.sensitivity_episodes`` episodes, action error on held-out
    observations); the allocation then removes ``cfg.sparsity`` of the layers'
    ``cfg.allocation_cost`` where the action error grows least. Returns a
    one-step schedule table (as :func:`gradual_prune` does) and the report's
    ``sensitivity`` section.
    """
    import time

    from .prune import allocate_sparsity, apply_allocation, layer_sensitivity
    from .prune.schedule import ScheduleResult, ScheduleStep

    if task is None:
        raise EdgevlaError("prune.allocation sensitivity measures closed-loop success: it needs a policy that "
                           "speaks the tabletop task's observations, or a simulator (evaluate.env); use "
                           "allocation uniform")
    heldout = task.split("heldout", 128, cfg.recovery.seed)
    observations = normalized_batch(spec, heldout.observations, heldout.actions)
    start = time.perf_counter()
    curves = layer_sensitivity(
        policy, (0.25, 0.5, 0.75, 0.9), units=layers, criterion=cfg.criterion, calibration=calibration,
        heldout=observations,
        success_fn=lambda p: torch_success(p, task, cfg.sensitivity_episodes, cfg.recovery.seed, loop))
    allocation = allocate_sparsity(curves, cfg.sparsity, cost=cfg.allocation_cost, metric="action_error")
    apply_allocation(policy, curves, allocation, criterion=cfg.criterion, calibration=calibration)
    seconds = time.perf_counter() - start
    zeros = sum(int((policy.get_submodule(n).weight == 0).sum()) for n in layers)
    weights = sum(policy.get_submodule(n).weight.numel() for n in layers)
    # The schedule's fractions are of weights; the allocation's target is of the chosen cost.
    step = ScheduleStep(1, zeros / weights, zeros / weights, scope_parameters(policy, None), seconds, 0.0)
    result = ScheduleResult("unstructured", zeros / weights, [step])
    return result, {"cost": allocation.cost, "metric": "action_error", "target": allocation.target,
                    "achieved": round(allocation.achieved, 6), "weights_zeroed": round(zeros / weights, 6),
                    "layer_sparsity": {k: round(v, 6) for k, v in allocation.sparsity.items()},
                    "episodes": cfg.sensitivity_episodes, "seconds": round(seconds, 2), **curves.to_dict()}


# --------------------------------------------------------------------------- quantization


def quantization_batches(policy: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None,
                         cfg: "CalibrationConfig") -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """Calibration inputs and where they came from: the user's directory of observation files, else
    the task's calibration split, else in-range random observations (a policy no task speaks)."""
    if cfg.data is not None:
        from .quant import iter_batches, load_observation_dir

        obs = load_observation_dir(spec, cfg.data, cfg.batches * cfg.batch_size)
        return [tuple(b) for b in iter_batches(spec, obs, cfg.batch_size)], f"directory {cfg.data}"
    batches = calibration_batches(policy, spec, task, "magnitude", n=cfg.batches, size=cfg.batch_size)
    return [tuple(args) for args, _ in batches], calibration_source(task)


def calibration_source(task: ClosedLoopTask | None) -> str:
    """Where :func:`calibration_batches` takes its observations from, said for a report."""
    if task is None:
        return "random observations inside the spec's ranges"
    return "the task's calibration split" if task.expert else f"the original policy's rollouts in {task.name}"


def qat_stream(teacher: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None, batch_size: int,
               seed: int = 50_000):
    """Endless QAT batches: the task's training observations (with its actions, which pure
    distillation does not use), else in-range random observations labelled by the float teacher."""
    if task is not None:
        for b in task.stream(batch_size, seed=seed):
            yield normalized_batch(spec, b.observations, b.actions)
        return
    i = 0
    while True:
        obs = spec.example(batch=batch_size, seed=seed + i)
        args = [torch.from_numpy(obs[k]) for k in spec.input_names]
        with torch.no_grad():
            target = teacher(*args).float()
        yield args, target  # outside no_grad: the consumer trains between yields
        i += 1


def ptq_settings(cfg: "QuantizeConfig", batches: list[tuple[torch.Tensor, ...]], float_dtype: str,
                 smoothquant_alpha: float | None) -> dict[str, Any]:
    """:func:`~edgevla.quant.quantize_policy`'s keyword arguments for the recipe's post-training quantization,
    SmoothQuant's ``alpha`` as :func:`smoothquant_alpha` resolved it."""
    cal = cfg.calibration
    kwargs: dict[str, Any] = dict(batches=batches, method=cal.method, group_size=cfg.group_size,
                                  smoothquant_alpha=smoothquant_alpha, float_dtype=float_dtype, tables=cfg.tables,
                                  int4_rounding=cfg.int4_rounding, int4_scaling=cfg.int4_scaling)
    if cal.method == "percentile":
        kwargs["percentile"] = cal.percentile
    return kwargs


def smoothquant_alpha(policy: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None, cfg: "QuantizeConfig",
                      batches: list[tuple[torch.Tensor, ...]], float_dtype: str) -> tuple[float | None, Any]:
    """SmoothQuant's ``alpha`` for ``policy`` (None: off) and, for ``alpha: auto``, the
    :class:`~edgevla.quant.alpha_search.AlphaSearch` that chose it on 128 held-out observations."""
    sq = cfg.smoothquant
    if not sq.enabled or cfg.format == "fp16":
        return None, None
    if sq.alpha != "auto":
        return sq.alpha, None
    from .quant import quantize_policy
    from .quant.alpha_search import search_alpha

    held = heldout_observations(spec, 128, seed=11, task=task)
    probe = [tuple(torch.from_numpy(held[n][i:i + 32]) for n in spec.input_names) for i in range(0, 128, 32)]

    reuse: dict[str, object] = {}  # one SmoothQuant analysis for every candidate

    def quantize(model: torch.nn.Module, alpha: float | None) -> torch.nn.Module:
        return quantize_policy(model, cfg.format, smoothquant_reuse=reuse,
                               **ptq_settings(cfg, batches, float_dtype, alpha)).model

    search = search_alpha(policy, quantize, probe)
    return search.alpha, search


@dataclass
class QuantizedStudent:
    """A (pruned) float student quantized as the recipe says: the fake-quant model with what made it, and the
    form mixed precision by SQNR raised each sensitive layer to (decided on this student; ``float`` for those
    kept float)."""
    result: "QuantizeResult"
    forms: dict[str, str]
    trained_steps: int = 0  # of pruning recovery, through the quantizer (prune.recovery.train: shipped)


@dataclass(frozen=True)
class ShippedForm:
    """What a float policy, maybe still masked, ships as: the model pruning recovery judges
    (``prune.recovery.judge: shipped``), so that it trains on until *that* is within budget, and, with
    ``prune.recovery.train: shipped``, the model it trains."""
    format: str
    layers: str  # which layers are quantized, said: "every layer", "layers under 30 dB solo SQNR kept float"
    quantize: Callable[[torch.nn.Module], QuantizedStudent]  # a new model; the policy is left as it was
    float_dtype: str  # what the quantized model stores its float tensors as
    tables: bool  # whether its tables are rounded to int8

    def said(self, trained: bool = False) -> str:
        """For the report and messages: "quantized w8a8 (every layer, post-training)"."""
        how = "trained through its quantizer" if trained else "post-training"
        return f"quantized {self.format} ({self.layers}, {how})"

    @property
    def what(self) -> str:
        return self.said()

    @property
    def trainable(self) -> bool:
        """Whether it has quantized layers to train through (fp16 has none)."""
        return self.format != "fp16"

    def of(self, policy: torch.nn.Module) -> torch.nn.Module:
        return self.quantize(policy).result.model


def sensitivity_batches(batches: list[tuple[torch.Tensor, ...]],
                        mp: "MixedPrecisionConfig") -> list[tuple[torch.Tensor, ...]]:
    """The first ``mp.sensitivity_samples`` observations of the first calibration batch: solo SQNR runs one
    forward per layer (and per rung tried), so a few samples, not a whole batch (base-vla's 32-sample batch
    made this a quarter of an hour on two cores)."""
    return [tuple(t[:mp.sensitivity_samples] for t in batches[0])]


def solo_sqnr(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]],
              mp: "MixedPrecisionConfig") -> dict[str, float]:
    """Each fake-quant layer's solo output SQNR (dB) on :func:`sensitivity_batches`."""
    from .quant import layer_sqnr

    return layer_sqnr(model, sensitivity_batches(batches, mp))


def forms_by_sqnr(model: torch.nn.Module, sensitivity: Mapping[str, float], batches: list[tuple[torch.Tensor, ...]],
                  mp: "MixedPrecisionConfig") -> tuple[dict[str, str], dict[str, Any]]:
    """Mixed precision by SQNR: the form each layer under ``mp.min_sqnr_db`` is raised to — up its precision
    ladder with ``mp.ladder``, else float — and, for the report, how the ladder chose (the solo SQNR of
    each rung tried; the output SQNR the whole model had to reach, what it reached, the layers that
    climbed further for it)."""
    from .quant import fallback_by_sqnr, raise_by_sqnr
    from .quant.ladder import FLOAT

    if not mp.ladder:
        return {n: FLOAT for n in fallback_by_sqnr(sensitivity, mp.min_sqnr_db)}, {}
    choice = raise_by_sqnr(model, sensitivity, mp.min_sqnr_db, sensitivity_batches(batches, mp))
    return choice.forms, {"rungs_tried_sqnr_db": choice.tried, "model_target_db": choice.target_db,
                          "model_sqnr_db": choice.model_sqnr_db, "climbed": choice.climbed}


def forms_said(forms: Mapping[str, str]) -> str:
    """"2 raised (fc1 w4a16/g32, fc2 w8a16), 1 kept float (head)" — or "none raised"."""
    from .quant.ladder import FLOAT

    raised = {n: f for n, f in forms.items() if f != FLOAT}
    kept = [n for n, f in forms.items() if f == FLOAT]
    parts = ([f"{len(raised)} raised ({', '.join(f'{n} {f}' for n, f in raised.items())})"] if raised else []) + (
        [f"{len(kept)} kept float ({', '.join(kept)})"] if kept else [])
    return ", ".join(parts) or "none raised"


def quantized_form(teacher: torch.nn.Module, spec: PolicySpec, task: ClosedLoopTask | None,
                   cfg: "QuantizeConfig", float_dtype: str) -> ShippedForm | None:
    """The recipe's post-training quantization of a (pruned) copy, as :func:`quantize_for_build` will
    quantize the final float model: the same calibration batches and settings, and with mixed precision
    by SQNR the same layers raised (decided on that copy). None with mixed precision by success (its
    search runs closed-loop episodes per layer: once, after recovery, not at every evaluation); QAT, which
    comes after recovery and keeps its weights only when they beat these, is not applied."""
    from .prune import baked_copy
    from .quant import quantize_policy

    mp = cfg.mixed_precision
    if mp.enabled and mp.metric == "success":
        return None
    batches, _ = quantization_batches(teacher, spec, task, cfg.calibration)
    # alpha: auto is searched on the teacher here, once: each student is quantized many times in recovery
    alpha = smoothquant_alpha(teacher, spec, task, cfg, batches, float_dtype)[0]
    kwargs = ptq_settings(cfg, batches, float_dtype, alpha)
    by_sqnr = mp.enabled and cfg.format != "fp16"

    def quantize(policy: torch.nn.Module) -> QuantizedStudent:
        plain = baked_copy(policy)  # exact zeros in plain weights, as the final model holds them
        result = quantize_policy(plain, cfg.format, **kwargs)
        forms = forms_by_sqnr(result.model, solo_sqnr(result.model, batches, mp), batches, mp)[0] if by_sqnr else {}
        return QuantizedStudent(quantize_policy(plain, cfg.format, forms=forms, **kwargs) if forms else result, forms)

    how = (f"layers under {mp.min_sqnr_db:g} dB solo SQNR " + ("raised up the precision ladder" if mp.ladder
                                                              else "kept float")) if by_sqnr else "every layer"
    return ShippedForm(cfg.format, how, quantize, float_dtype, cfg.tables)


def quantize_for_build(policy: torch.nn.Module, teacher: torch.nn.Module, spec: PolicySpec,
                       task: ClosedLoopTask | None,
                       cfg: "QuantizeConfig", *, float_dtype: str, max_loss: float, progress: Progress,
                       loop: EvaluateConfig | None = None,
                       trained: QuantizedStudent | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fake-quant model of ``policy`` (float, maybe pruned) as ``cfg`` asks, and the report entry.

    (Fold BatchNorms into convolutions) → calibrate → (SmoothQuant) → quantize every Linear and
    convolution → measure each layer's
    solo output SQNR → with mixed precision, quantize again with the
    sensitive layers raised (up the precision ladder, or to float) → (QAT
    distilled from ``teacher``) → round what stays float to ``float_dtype``.
    With ``trained`` — the pruned student quantized the same way before
    recovery and trained through its quantizer (``prune.recovery.train:
    shipped``) — that model is the result: its layers' forms were chosen
    before recovery, and only the measurements and QAT follow.
    """
    import time

    from .quant import fallback_by_success, model_sqnr, quantization_aware_training, quantize_policy, settle

    start = time.perf_counter()
    cal = cfg.calibration
    batches, source = quantization_batches(policy, spec, task, cal)
    alpha, search = smoothquant_alpha(policy, spec, task, cfg, batches, float_dtype) if trained is None else (
        None, None)
    kwargs = ptq_settings(cfg, batches, float_dtype, alpha)
    samples = sum(len(b[0]) for b in batches)
    gptq = cfg.int4_rounding == "gptq" and (cfg.format == "w4a16" or cfg.mixed_precision.enabled)
    calibrated = cfg.format in ("w8a8", "fp8") or (cfg.smoothquant.enabled and cfg.format != "fp16")
    info: dict[str, Any] = {
        "format": cfg.format, "float_dtype": float_dtype,
        # Weight-only formats need no activation ranges; the batches still measure sensitivity.
        "calibration": {"method": cal.method, "source": source, "batches": len(batches), "samples": samples,
                        "activation_ranges": cfg.format in ("w8a8", "fp8")},
        "smoothquant": {"enabled": cfg.smoothquant.enabled, "alpha": alpha if search else cfg.smoothquant.alpha,
                        **({"alpha_search": {"chosen": "off" if alpha is None else alpha, "sqnr_db": search.sqnr_db}}
                           if search else {})},
        "group_size": cfg.group_size if cfg.format == "w4a16" else None,
        "int4_rounding": cfg.int4_rounding if cfg.format == "w4a16" or cfg.mixed_precision.enabled else None,
        "int4_scaling": cfg.int4_scaling if cfg.format == "w4a16" or cfg.mixed_precision.enabled else None,
    }
    result = trained.result if trained is not None else quantize_policy(policy, cfg.format, **kwargs)
    if trained is not None:
        info["trained_in_recovery"] = {"steps": trained.trained_steps}
    probe = batches[:4]
    forms: dict[str, str] = {}
    if cfg.format != "fp16":
        mp = cfg.mixed_precision
        sensitivity = solo_sqnr(result.model, batches, mp)
        info["layer_sqnr_db"] = {k: round(v, 3) for k, v in sensitivity.items()}
        info["layer_sqnr_samples"] = len(batches[0][0][:mp.sensitivity_samples])
        if mp.enabled:
            if trained is not None:  # by SQNR (by success trains the float student): chosen before recovery
                forms = trained.forms
                info["mixed_precision"] = {"metric": "sqnr", "min_sqnr_db": mp.min_sqnr_db, "ladder": mp.ladder,
                                           "decided": "on the pruned student, before recovery trained it"}
            elif mp.metric == "sqnr":
                forms, how_chosen = forms_by_sqnr(result.model, sensitivity, batches, mp)
                info["mixed_precision"] = {"metric": "sqnr", "min_sqnr_db": mp.min_sqnr_db, "ladder": mp.ladder,
                                           **how_chosen}
            else:
                if task is None:
                    raise EdgevlaError("quantize.mixed_precision.metric success needs closed-loop episodes, and no "
                                       "task speaks this policy's observations (evaluate.env names a simulator): "
                                       "use metric sqnr")
                def success(model: torch.nn.Module) -> float:
                    return torch_success(model, task, mp.episodes, mp.seed, loop)

                budget = max_loss if mp.max_loss is None else mp.max_loss
                reference = success(teacher)
                search = fallback_by_success(result.model, sensitivity, success, reference - budget,
                                             ladder=mp.ladder)
                forms = search.forms
                info["mixed_precision"] = {"metric": "success", "max_loss": budget, "episodes": mp.episodes,
                                           "ladder": mp.ladder, "float_success": reference, **search.to_dict()}
            info["mixed_precision"]["raised"] = {n: f for n, f in forms.items() if f != "float"}
            info["mixed_precision"]["kept_float"] = [n for n, f in forms.items() if f == "float"]
            if forms and trained is None:
                result = quantize_policy(policy, cfg.format, forms=forms, **kwargs)
    if cfg.qat.enabled:
        if cfg.format == "fp16":
            info["qat"] = "not run: fp16 has no quantized layer to train"
        else:
            heldout = heldout_observations(spec, 128, seed=7, task=task)
            args = [torch.from_numpy(heldout[n]) for n in spec.input_names]
            report = quantization_aware_training(
                result.model, teacher, qat_stream(teacher, spec, task, cfg.qat.batch_size), steps=cfg.qat.steps,
                heldout=args, lr=cfg.qat.lr, batch_size=cfg.qat.batch_size)
            settle(result.model, float_dtype, cfg.tables)  # training moved the float tensors off their grids
            info["qat"] = report.to_dict()
            undone = "" if report.kept == "qat" else " (no gain: the PTQ weights are kept)"
            progress.note(f"QAT: {report.steps} steps in {report.seconds:.1f} s; output SQNR against the float "
                          f"policy {report.sqnr_before_db:.1f} -> {report.sqnr_trained_db:.1f} dB{undone}")
    formats = result.formats
    info["layers"] = {n: {"format": f, **({"group_size": result.group_sizes[n]} if n in result.group_sizes else {})}
                      for n, f in formats.items()}
    info["tables_rounded"] = result.tables  # on their int8 grid; the export says which ship as int8
    info["batch_norms_folded"] = result.folded_norms
    if result.notes:
        info["notes"] = result.notes
    info["smoothquant"]["folded_into"] = result.smoothed
    if result.awq:  # what each group's scale did to its readers' output error on the calibration inputs
        info["awq"] = {d.norm: {"alpha": d.alpha, "error_ratio": round(d.error_after / d.error_before, 4)
                                if d.error_before > 0 else 1.0} for d in result.awq}
    if cfg.format != "fp16":
        info["model_sqnr_db"] = round(model_sqnr(result.model, probe), 3)
    info["seconds"] = round(time.perf_counter() - start, 3)
    quantized = sum(f != "float" for f in formats.values())
    sqnr = f"; output SQNR {info['model_sqnr_db']:.1f} dB against float" if "model_sqnr_db" in info else ""
    how = f", calibrated ({cal.method}) on {samples} observations from {source}" if calibrated else ""
    if gptq and any(f.startswith("w4a16") for f in result.formats.values()):
        how += ("; int4 weights rounded by GPTQ on those observations" if calibrated
                else f"; int4 weights rounded by GPTQ on {samples} observations from {source}")
    if result.awq:
        how += f"; AWQ scaled the inputs of {sum(d.alpha > 0 for d in result.awq)} of {len(result.awq)} int4 groups"
    convs = sum(isinstance(m, torch.nn.modules.conv._ConvNd) for n, m in result.model.named_modules() if n in formats)
    kinds = f"Linear and convolution layers ({convs} convolutions)" if convs else "Linear layers"
    folded = f"; {len(result.folded_norms)} BatchNorm(s) folded into their convolutions" if result.folded_norms else ""
    trained_said = "" if trained is None else (
        f"; then trained through its quantizer for {trained.trained_steps} steps of pruning recovery"
        if trained.trained_steps else "; pruning recovery judged it so and needed no training")
    mixed = f" (mixed precision: {forms_said(forms)})" if "mixed_precision" in info else ""
    progress.note(f"quantized {quantized} of {len(formats)} {kinds} to {cfg.format}{mixed}"
                  f"{how}{folded}{trained_said}; float tensors stored {float_dtype}{sqnr}; "
                  f"{info['seconds']:.1f} s")
    if search is not None:
        progress.note(smoothquant_said(info["smoothquant"]))
    for note in result.notes:
        progress.note(note)
    return result.model, info


def smoothquant_said(sq: Mapping[str, Any]) -> str:
    """"SmoothQuant α=0.5", or the search's choice with what each candidate gave."""
    search = sq.get("alpha_search")
    if not search:
        alpha = sq["alpha"]
        return f"SmoothQuant α={alpha:g}" if isinstance(alpha, (int, float)) else f"SmoothQuant α {alpha}"
    chosen = "off" if search["chosen"] == "off" else f"α={search['chosen']:g}"
    tried = ", ".join(f"{k}: {v:.1f}" for k, v in search["sqnr_db"].items())
    return f"SmoothQuant {chosen}, the best held-out output SQNR of those tried (dB, {tried})"


def quantization_markdown(info: Mapping[str, Any], layers: list[dict[str, Any]]) -> str:
    """The report.md section of a quantized build: settings, then every layer's shipped precision."""
    out = ["", "## Quantization", "",
           f"Format **{info['format']}**; float tensors stored {info['float_dtype']}"
           + (f"; activation ranges calibrated ({info['calibration']['method']}) on "
              f"{info['calibration']['samples']} observations from {info['calibration']['source']}"
              if info["calibration"]["activation_ranges"] else "")
           + (f"; {smoothquant_said(info['smoothquant'])}" if info["smoothquant"]["enabled"] else "")
           + (f"; output SQNR {info['model_sqnr_db']:.1f} dB against float" if "model_sqnr_db" in info else "") + ".",
           ""]
    if info.get("batch_norms_folded"):
        out += [f"BatchNorm folded into the convolution before it (so its int8 scales fit the filter that ships): "
                f"{', '.join(info['batch_norms_folded'])}.", ""]
    out += [f"{note[0].upper()}{note[1:]}." for note in info.get("notes", [])] + ([""] if info.get("notes") else [])
    if isinstance(info.get("mixed_precision"), Mapping):
        mp = info["mixed_precision"]
        forms = {**mp.get("raised", {}), **{n: "float" for n in mp["kept_float"]}}
        ladder = "up the precision ladder" if mp.get("ladder") else "to float"
        out += [f"Mixed precision ({mp['metric']}, sensitive layers raised {ladder}): {forms_said(forms)}.", ""]
    if isinstance(info.get("trained_in_recovery"), Mapping):
        steps = info["trained_in_recovery"]["steps"]
        out += ["Quantized after pruning, before recovery, which judged this model and "
                + (f"trained it through its quantizer (straight-through) for {steps} steps"
                   if steps else "needed no training") + " (`prune.recovery.train: shipped`)"
                + ("; the layers raised were chosen before training" if "mixed_precision" in info else "")
                + ".", ""]
    if isinstance(info.get("qat"), Mapping):
        q = info["qat"]
        out += [f"QAT: {q['steps']} steps; output SQNR {q['sqnr_before_db']:.1f} → {q['sqnr_trained_db']:.1f} dB"
                + ("" if q["kept"] == "qat" else " (no gain: PTQ weights kept)") + ".", ""]
    sqnr = info.get("layer_sqnr_db", {})
    if "layer_sqnr_samples" in info:
        out += [f"Solo SQNR: the policy's output with only that layer quantized, over "
                f"{info['layer_sqnr_samples']} calibration samples.", ""]
    out += ["| layer | format | stored as | group | shape | solo SQNR dB | sparsity | pattern |",
            "|---|---|---|---|---|---|---|---|"]
    for row in layers:
        solo = sqnr.get(row["name"])
        out.append(f"| {row['name']} | {row.get('format', 'float')} | {row['precision']} | {row.get('group_size', '')} "
                   f"| {'×'.join(map(str, row['shape']))} | {'' if solo is None else f'{solo:.1f}'} "
                   f"| {row['sparsity']:.3f} | {row['pattern']} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- stages


class Build:
    """One build; each stage is a method, run in order by :meth:`run`."""

    def __init__(self, request: BuildRequest, progress: Progress | None = None):
        self.request = request
        self.progress = progress or Progress()
        from .export.trace_cache import TraceCache

        self.work = Path(tempfile.mkdtemp(prefix="edgevla-build-"))
        self._own_traces = TraceCache()  # this build's traced graphs, where no memo holds them

    # load ---------------------------------------------------------------
    def load(self) -> None:
        req = self.request
        self.target = load_target(req.target)
        self.recipe: Recipe = load_recipe(req.recipe, self.target, dict(req.overrides) or None)
        q = self.recipe.quantize
        self.float_dtype = "fp32"
        if q.format != "none":  # before any slow work: fp8 on Orin, say, stops here
            from .quant import check_precision_supported, storage_dtype

            check_precision_supported(self.target, q.format)
            self.float_dtype = "fp16" if q.format == "fp16" else storage_dtype(self.target, q.float_dtype)
        ref = req.policy or self.recipe.policy or DEFAULT_POLICY
        self.loaded: LoadedPolicy = load_policy(ref, allow_pickle=req.allow_pickle)
        self.original = self.loaded.policy.eval()
        self.loaded_dtypes = float_dtypes_below_fp32(self.original)
        if self.loaded_dtypes:  # ONNX has no bf16 Conv and calibration wants fp32: each value is exact in fp32
            self.original.float()
        self.spec = spec_of(self.original)
        self.output = resolve_output(req.output, self.loaded.name, self.target)
        chunk = self.spec.chunk_size
        if self.recipe.evaluate.execute > chunk:
            if self.recipe.evaluate.execute != Recipe.defaults().evaluate.execute:
                raise EdgevlaError(f"recipe: evaluate.execute = {self.recipe.evaluate.execute} actions of the "
                                   f"policy's chunks of {chunk}")
            # the default (4, for chunking policies) on a policy whose chunks are shorter: all of each
            self.recipe = self.recipe.apply_overrides({"evaluate.execute": chunk})
            self.progress.note(f"the policy's chunks hold {chunk} action{'s' * (chunk > 1)}: the robot's loop "
                               f"executes {'it' if chunk == 1 else 'all'} (evaluate.execute = {chunk})")
        self.progress.note(f"policy {self.loaded.name} ({self.loaded.kind}: {self.loaded.source}); "
                           f"target {self.target.name}; bundle {self.output}")
        if self.loaded_dtypes:
            self.progress.note(f"the policy's weights are {' and '.join(self.loaded_dtypes)}: compressed, exported "
                               f"and measured as float32 (exact), shipped as the recipe stores floats "
                               f"({self.float_dtype})")

    # analyze ------------------------------------------------------------
    def analyze(self) -> None:
        ev = self.recipe.evaluate
        self.memo = self.request.memo
        self.reused: list[str] = []  # what of the original's came from the memo
        self.original_digest = fingerprint(self.original) if self.memo is not None else None
        self.task = with_demonstrator(task_for(self.spec, ev), self.original)
        if self.task is not None and not self.task.expert:  # a simulator: its demonstrations are the original's
            if self.memo is not None:
                key = ("rollouts", self.original_digest, ev.env, ev.env_max_steps, ev.execute, ev.env_noise)
                self.task.keep_demonstrations_in(self.memo.value(key, dict)[0])
            self.progress.note(f"closed-loop task: {self.task.name} (demonstrations: the original policy's "
                               "rollouts in it)")
        self.heldout = heldout_observations(self.spec, self.recipe.verify.samples, task=self.task)
        check_policy_runs(self.original, self.spec, batch_of(self.heldout, 0, 2))
        one = batch_of(self.heldout, 0, 1)
        self.example_args = [torch.from_numpy(one[n]) for n in self.spec.input_names]
        self.flops = {"original": flop_report(self.original, self.example_args)}
        p = count_parameters(self.original)
        self.progress.note(f"{p.total:,} parameters, {self.flops['original'].total / 1e6:.1f} MFLOPs per inference")
        if self.task is None:
            self.progress.note("no closed-loop task speaks this policy's observations: success will not be measured")

    # compress -----------------------------------------------------------
    def compress(self) -> None:
        self.explicit_attention: dict[str, Any] | None = None
        compressing = self.recipe.prune.method != "none" or self.quantized
        rewritten = self._explicit_attention() if compressing else None
        # A copy either way, so that later stages never alias the reference they are compared against.
        self.built = (rewritten or copy.deepcopy(self.original)).eval()
        self.thawed = self._thaw_frozen_batch_norms()  # exact: a float build's export folds them too
        self.pruning: dict[str, Any] | None = None
        if self.recipe.prune.method != "none":
            shipped = (quantized_form(self.original, self.spec, self.task, self.recipe.quantize, self.float_dtype)
                       if self.quantized and self.task is not None else None)
            self.pruning, trained = prune_policy(
                self.built, self.original, self.spec, self.task, self.recipe.prune, original=self._original_memo,
                shipped=shipped, round_to=self.target.facts.preferred_channel_multiple,
                max_loss=self.recipe.accuracy_loss_budget(self.target), progress=self.progress,
                loop=self.recipe.evaluate)
        else:
            trained = None
        self.quantization: dict[str, Any] | None = None
        self.float_built = self.built  # the (pruned) float model: its architecture is what the manifest records
        if self.quantized:
            self.built, self.quantization = quantize_for_build(
                self.built, self.original, self.spec, self.task, self.recipe.quantize, float_dtype=self.float_dtype,
                max_loss=self.recipe.accuracy_loss_budget(self.target), progress=self.progress,
                loop=self.recipe.evaluate, trained=trained)
        check_policy_runs(self.built, self.spec, batch_of(self.heldout, 0, 2))
        self.flops["built"] = flop_report(self.built, self.example_args)

    def _explicit_attention(self) -> torch.nn.Module | None:
        """A copy of the original with PyTorch's fused attention modules as plain Linear layers, so that pruning
        and quantization reach them; None when it has none (or they could not be rewritten: noted)."""
        from .models.explicit_attention import explicit_attention

        check = batch_of(self.heldout, 0, min(8, self.recipe.verify.samples))
        result = explicit_attention(self.original, [torch.from_numpy(check[n]) for n in self.spec.input_names])
        if result.rewritten:
            self.progress.note(f"{len(result.rewritten)} fused attention module(s) rewritten as explicit Linear "
                               f"layers for compression (max abs difference {result.max_abs_diff:.1e})")
        elif result.left_fused:
            self.progress.note(f"fused attention modules left as they are: {result.left_fused}")
        if result.rewritten or result.left_fused:
            self.explicit_attention = result.to_dict()
        return result.model if result.rewritten else None

    def _thaw_frozen_batch_norms(self) -> list[str]:
        """The built copy's frozen BatchNorms (buffers applied element-wise) made ``nn.BatchNorm2d``, checked to
        compute the same, so that quantization folds them into their convolutions."""
        from .models.frozen_batch_norm import TOLERANCE as FROZEN_BN_TOLERANCE, thaw_frozen_batch_norms

        thawed = thaw_frozen_batch_norms(self.built)
        if thawed:
            self.progress.note(f"{len(thawed)} frozen BatchNorm(s) (statistics as buffers, applied element-wise) "
                               "taken as nn.BatchNorm2d, the same function, so they fold into their convolutions "
                               f"(max abs difference under {FROZEN_BN_TOLERANCE:g} x the output's size)")
        return thawed

    @property
    def quantized(self) -> bool:
        return self.recipe.quantize.format != "none"

    # export -------------------------------------------------------------
    def export(self) -> None:
        from .export import export_onnx

        opts = self.recipe.export
        # Graphs traced by this build, or by the builds sharing its memo: a compressed policy whose structure
        # one of them has (pruned by masks, recovered, smoothed) gets its weights written into that graph.
        self.traces = self.memo.traces if self.memo is not None else self._own_traces

        def original(path: Path) -> Path:
            return export_onnx(self.original, path, opset=opts.opset, dynamic_batch=opts.dynamic_batch,
                               cache=self.traces)

        self.onnx = {"original": self._original_memo("onnx", (opts.opset, opts.dynamic_batch),
                                                     file=(self.work / "original.onnx", original))}
        reused = self.traces.reused
        if self.quantized:
            self.onnx["built"] = self._export_quantized()
        else:
            self.onnx["built"] = export_onnx(self.built, self.work / "model.onnx", opset=opts.opset,
                                             dynamic_batch=opts.dynamic_batch, cache=self.traces)
        self.onnx_graph = "re-weighted" if self.traces.reused > reused else "traced"
        if self.onnx_graph == "re-weighted":
            self.progress.note("ONNX: the built policy's weights written into a graph traced from the same "
                               "structure (checked on ONNX Runtime), not traced again")
        self.layers = layer_table(self.built, self.onnx["built"])

    def _export_quantized(self) -> Path:
        """Q/DQ ONNX of the fake-quant model, linted against TensorRT's rules (a violation fails the build).

        The quantized file carries no debug metadata; it is stripped from the
        original's file too, so that their sizes compare like for like.
        """
        import onnx

        from .export.lint import lint_qdq
        from .export.qdq import export_quantized, strip_debug_metadata

        opts = self.recipe.export
        mp = self.quantization.get("mixed_precision") or {}
        raised = [*mp.get("raised", {}), *mp.get("kept_float", [])]  # their input stays float on every runtime
        path = export_quantized(self.built, self.work / "model.onnx", opset=opts.opset,
                                float_dtype=self.float_dtype, dynamic_batch=opts.dynamic_batch, float_inputs=raised,
                                cache=self.traces)
        issues = lint_qdq(path)
        self.lint = [str(i) for i in issues]
        if issues:
            more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
            raise GateFailed(f"Q/DQ lint: the exported model breaks TensorRT's rules: {issues[0]}{more}")
        graph = onnx.load(str(path)).graph
        tables = set(self.quantization["tables_rounded"])
        self.quantization["tables_int8"] = [n.output[0] for n in graph.node
                                            if n.op_type == "DequantizeLinear" and n.output[0] in tables]
        original = onnx.load(str(self.onnx["original"]))
        onnx.save(strip_debug_metadata(original), str(self.onnx["original"]))
        sizes = {k: file_size(v) for k, v in (("original", self.onnx["original"]), ("built", path))}
        self.quantization["onnx_bytes"] = sizes
        self.quantization["size_ratio"] = round(sizes["built"] / sizes["original"], 4)
        self.quantization["lint"] = "passed"
        self.progress.note(f"Q/DQ ONNX {sizes['built']:,} bytes, {sizes['built'] / sizes['original']:.1%} of the "
                           f"fp32 file ({sizes['original']:,}); TensorRT Q/DQ lint passed")
        return path

    # verify -------------------------------------------------------------
    def verify(self) -> None:
        from .export import verify_onnx

        v = self.recipe.verify
        if self.quantized:
            self._verify_quantized()
            return
        self.verification = verify_onnx(self.built, self.onnx["built"], self.heldout, atol=v.atol,
                                        min_cosine=v.min_cosine)
        r = self.verification
        self.progress.note(f"ONNX Runtime vs PyTorch on {r.samples} held-out observations: "
                           f"max abs error {r.max_abs_error:.2e}, cosine {r.cosine:.8f}")
        if not r.passed:
            raise GateFailed(f"verify: ONNX Runtime differs from PyTorch (max abs error {r.max_abs_error:.3e} "
                             f"> {v.atol:g} or cosine {r.cosine:.6f} < {v.min_cosine})")

    def _verify_quantized(self) -> None:
        """The Q/DQ file, executed literally by ONNX Runtime, against the fake-quant PyTorch model.

        Tolerances are ``quantize.parity``: codes and scales are identical, but
        an activation within float noise of a rounding tie can take the
        neighbouring code, in a few observations: ``atol`` bounds the typical
        observation's largest error (export.verify.compare's ``tie_flips``).
        The onnxruntime backend's session (integer kernels, but on an x86 CPU
        without VNNI, where they saturate; what ``evaluate`` runs) is compared
        too and reported, not gated.
        """
        from .export import verify_onnx
        from .export.qdq import ort_qdq_entries, verify_quantized

        p = self.recipe.quantize.parity
        r = verify_quantized(self.built, self.onnx["built"], self.heldout, atol=p.atol, min_cosine=p.min_cosine)
        self.verification = r
        fused = verify_onnx(self.built, self.onnx["built"], self.heldout, atol=1e30, min_cosine=-1.0)  # measured only
        entries = ort_qdq_entries()  # the onnxruntime backend's, on this host
        self.quantization["parity"] = {"reference_session": r.to_dict(),
                                       "default_session": {"max_abs_error": fused.max_abs_error,
                                                           "cosine": fused.cosine, "entries": entries}}
        default = ("ONNX Runtime's integer kernels" if not entries else
                   "ONNX Runtime as the onnxruntime backend runs it (QDQ fusions off: its integer kernels saturate "
                   "on an x86 CPU without VNNI)")
        self.progress.note(f"ONNX Runtime (Q/DQ run literally) vs fake-quant PyTorch on {r.samples} held-out "
                           f"observations: max abs error {r.max_abs_error:.2e} (the typical observation's "
                           f"{r.typical_max_abs_error:.2e}), cosine {r.cosine:.8f}; {default}: max abs error "
                           f"{fused.max_abs_error:.2e}")
        if not r.passed:
            raise GateFailed(f"verify: the Q/DQ ONNX model differs from the fake-quant PyTorch model (the typical "
                             f"observation's max abs error {r.typical_max_abs_error:.3e} > {p.atol:g} or cosine "
                             f"{r.cosine:.6f} < {p.min_cosine})")

    # evaluate -----------------------------------------------------------
    def evaluate(self) -> None:
        ev = self.recipe.evaluate
        self.runners = {"original": {"torch": make_runner("torch", policy=self.original)}}
        self.runners["built"] = {b: self._runner("built", b) for b in sorted(set(ev.backends) | {"torch"})}
        ref = self.runners["original"]["torch"]
        built_backend = ev.backends[0]
        # Action error in real units, on held-out observations, against the original policy.
        ref_actions = self.spec.denormalize(ref(self.heldout))
        errors = {b: np.abs(self.spec.denormalize(r(self.heldout)) - ref_actions)
                  for b, r in self.runners["built"].items()}
        self.action_error = {b: float(np.mean(e)) for b, e in errors.items()}
        # By chunk index: a loop that runs late or ensembles executes the far end of each chunk, which one that
        # executes its first few actions at once never does. Where a task is known, also on its episodes' first
        # observations, where the robot is far from its goal and the far end of the chunk moves it most.
        def by_index(error: np.ndarray) -> list[float]:
            return [float(e) for e in error.mean(axis=(0, 2))]

        self.action_error_by_index = {"held-out": by_index(errors[built_backend])}
        if self.task is not None:
            starts = first_observations(self.task, ev.episodes, ev.seed)
            built = self.spec.denormalize(self.runners["built"][built_backend](starts))
            self.action_error_by_index["episode starts"] = by_index(np.abs(built - self.spec.denormalize(ref(starts))))
        self.results: dict[str, Any] = {}
        self.tolerance: dict[str, Any] | None = None
        self.uncertainty: dict[str, Any] | None = None
        if self.task is None:
            return
        jobs = [("original", "torch")] + [("built", b) for b in ev.backends]
        with self.progress.task(f"{ev.episodes} episodes x {len(jobs)} models", ev.episodes * len(jobs)) as advance:
            for label, backend in jobs:
                def run(label: str = label, backend: str = backend) -> EvalResult:
                    return evaluate(action_fn(self.runners[label][backend]), self.task, episodes=ev.episodes,
                                    seed=ev.seed, progress=advance, **robot_loop(ev))

                self.results[(label, backend)] = run() if label == "built" else self._original_memo(
                    "evaluate", (self.task.key, ev.episodes, ev.seed, tuple(sorted(robot_loop(ev).items()))),
                    run)
        before = self.results[("original", "torch")].success_rate
        loop = "" if (ev.latency_ticks, ev.schedule) == (0, "sync") else (
            f" ({ev.latency_ticks} tick(s) of latency, {ev.schedule}"
            + (f" m = {ev.ensemble_m:g})" if ev.schedule == "ensemble" else ")"))
        for b in ev.backends:
            self.progress.note(f"closed-loop success{loop}: original (torch) {before:.1%}, "
                               f"built ({b}) {self.results[('built', b)].success_rate:.1%}")
        worst = min(ev.backends, key=lambda b: self.results[("built", b)].success_rate)
        budget = self.recipe.accuracy_loss_budget(self.target)
        self.uncertainty = {"backend": worst, **success_uncertainty(
            self.results[("original", "torch")].successes, self.results[("built", worst)].successes, budget)}
        self.progress.note(f"closed-loop success {uncertainty_said(self.uncertainty)}")
        accuracy_gate(before, self.results[("built", worst)].success_rate, budget, self.uncertainty["loss_ci95"],
                      confident=ev.gate == "confident")
        self.success_backend = built_backend
        if ev.tolerance.max_ticks:
            self.tolerance = self._latency_tolerance(floor=before - budget)

    def _latency_tolerance(self, floor: float) -> dict[str, Any]:
        """Original and built policy's success over 0..max_ticks ticks of latency in each schedule of
        ``evaluate.tolerance``, on the gate's episodes, and the ticks each keeps the gate's floor."""
        ev = self.recipe.evaluate
        tol = ev.tolerance
        jobs = [("original", "torch"), ("built", self.success_backend)]
        points = len(tol.schedules) * (tol.max_ticks + 1) * ev.episodes
        curves = {}
        with self.progress.task(f"latency tolerance: 0-{tol.max_ticks} ticks x {len(tol.schedules)} schedule(s) "
                                f"x {len(jobs)} models", points * len(jobs)) as advance:
            for label, backend in jobs:
                def run(label: str = label, backend: str = backend) -> dict[str, ToleranceCurve]:
                    return latency_tolerance(
                        action_fn(self.runners[label][backend]), self.task, max_ticks=tol.max_ticks, floor=floor,
                        schedules=tol.schedules, episodes=ev.episodes, seed=ev.seed, execute=ev.execute,
                        ensemble_m=ev.ensemble_m, known={(ev.schedule, ev.latency_ticks): self.results[(label, backend)]},
                        progress=advance)

                curves[label] = run() if label == "built" else self._original_memo(
                    "latency_tolerance", (self.task.key, ev.episodes, ev.seed, ev.execute, ev.ensemble_m,
                                          ev.schedule, ev.latency_ticks, tol.max_ticks, tuple(tol.schedules), floor),
                    run)
        for s in tol.schedules:
            self.progress.note(f"latency tolerated (success >= {floor:.1%} at every latency up to it), {s}: "
                               + "; ".join(f"{label} {_ticks_tolerated(curves[label][s])}" for label, _ in jobs))
        return {"floor": floor, "max_ticks": tol.max_ticks, "control_rate_hz": self.spec.control_rate_hz,
                "episodes": ev.episodes, "seed": ev.seed, "execute": ev.execute, "ensemble_m": ev.ensemble_m,
                "backends": dict(jobs),
                "schedules": {s: {label: curves[label][s].to_dict() for label, _ in jobs} for s in tol.schedules}}

    def _original_memo(self, what: str, settings: tuple, make: Callable[[], Any] | None = None, *,
                       file: tuple[Path, Callable[[Path], Path]] | None = None) -> Any:
        """``make()``, or the original's ``what`` measured with these ``settings`` by an earlier build sharing this
        build's memo; ``file`` = (path, make(path)) for a result kept as a file, copied to its path."""
        if self.memo is None:
            return make() if file is None else file[1](file[0])
        key = (what, self.original_digest, settings)
        value, reused = self.memo.file(key, *file) if file is not None else self.memo.value(key, make)
        if reused:
            self.reused.append(what)
            self.progress.note(f"original policy's {what.replace('_', ' ')}: as an earlier build of this search "
                               "measured it (same weights, same settings)")
        return value

    def _runner(self, label: str, backend: str) -> Runner:
        policy = self.built if label == "built" else self.original
        return make_runner(backend, policy=policy, onnx_path=self.onnx[label], spec=self.spec,
                           threads=self.recipe.profile.threads)

    # profile ------------------------------------------------------------
    def profile(self) -> None:
        from .export.qdq import ort_qdq_entries

        pc = self.recipe.profile
        budgets = self.target.budgets
        obs1 = batch_of(self.heldout, 0, 1)
        np.savez(self.work / "inputs.npz", **obs1)
        self.metrics: dict[str, ModelMetrics] = {}
        total = 2 * len(pc.backends)
        with self.progress.task(f"latency: {pc.runs} runs x {total}", total) as advance:
            for label in ("original", "built"):
                policy = self.original if label == "original" else self.built
                latency, thr, deadline = {}, {}, {}
                for backend in pc.backends:
                    runner = self.runners[label].get(backend) or self._runner(label, backend)
                    self.runners[label][backend] = runner
                    latency[backend] = measure_latency(lambda: runner(obs1), warmup=pc.warmup, runs=pc.runs)
                    deadline[backend] = deadline_misses(latency[backend], budgets.control_rate_hz,
                                                        budgets.latency_budget_ms)
                    thr[backend] = throughput(
                        lambda b, runner=runner: (lambda x=batch_of(self.heldout, 0, b): runner(x)),
                        pc.batch_sizes, runs=max(5, pc.runs // 10), warmup=2)
                    advance(1)
                memory = measure_peak_memory("onnx", self.onnx[label], self.work / "inputs.npz",
                                             runs=20, warmup=3, threads=pc.threads,
                                             session_entries=ort_qdq_entries())  # as the backend runs it
                success = self.results.get((label, "torch" if label == "original" else self.success_backend_or()))
                self.metrics[label] = ModelMetrics(
                    label=label, params=count_parameters(policy), size_bytes=file_size(self.onnx[label]),
                    flops=self.flops[label], memory=memory, latency=latency,
                    reference_backend="onnxruntime" if "onnxruntime" in latency else None,
                    throughput=thr, deadline=deadline,
                    success_rate=success.success_rate if success else None,
                    mean_steps=success.mean_steps if success else None,
                    smoothness=success.smoothness if success else None,
                    action_error=0.0 if label == "original" else self.action_error[self.success_backend_or()],
                )

    def success_backend_or(self) -> str:
        return getattr(self, "success_backend", self.recipe.evaluate.backends[0])

    # bundle -------------------------------------------------------------
    def bundle(self) -> Path:
        t = self.target
        target_info = {
            "name": t.name, "control_rate_hz": t.budgets.control_rate_hz,
            "latency_budget_ms": t.budgets.latency_budget_ms, "memory_budget_mb": t.budgets.memory_budget_mb,
            "max_accuracy_loss": self.recipe.accuracy_loss_budget(t),
            "memory_bandwidth_gbps": t.facts.memory_bandwidth_gbps, "peak_tflops": dict(t.facts.peak_tflops),
        }
        eff = self.recipe.efficiency
        r = self.verification
        report = build_report(
            self.metrics["original"], self.metrics["built"], target=target_info, host=host_info(),
            efficiency_weights=(eff.alpha, eff.beta, eff.gamma),
            roofline={k: roofline_for(self.flops[k], t) for k in ("original", "built")},
            stage_timings=dict(self.progress.stage_seconds),
            extra={
                "policy": {"name": self.loaded.name, "reference": self.loaded.reference, "source": self.loaded.source,
                           **({"loaded_dtypes": self.loaded_dtypes} if self.loaded_dtypes else {})},
                "verify": {"max_abs_error": r.max_abs_error, "mean_abs_error": r.mean_abs_error,
                           "cosine": r.cosine, "atol": r.atol, "min_cosine": r.min_cosine,
                           "samples": r.samples, "passed": r.passed},
                "evaluate": {f"{label}/{backend}": res.to_dict() for (label, backend), res in self.results.items()}
                or "not measured: no closed-loop task speaks this policy's observations",
                "closed_loop_task": None if self.task is None else self.task.name,
                "success_uncertainty": self.uncertainty or "not measured: no closed-loop task speaks this policy's "
                                                           "observations",
                "original_reused": self.reused or "none",
                "onnx_graph": self.onnx_graph,
                "robot_loop": {k: v for k, v in asdict(self.recipe.evaluate).items()
                               if k in ("execute", "latency_ticks", "schedule")
                               or (k == "ensemble_m" and self.recipe.evaluate.schedule == "ensemble")},
                "action_error_by_backend": self.action_error,
                "action_error_by_index": {"backend": self.success_backend_or(), **self.action_error_by_index},
                "latency_tolerance": self.tolerance or (
                    "not measured (evaluate.tolerance.max_ticks: 0)" if self.task is not None
                    else "not measured: no closed-loop task speaks this policy's observations"),
                "latency_measured_on": "this host (see host), batch 1; the roofline is an estimate for the target",
                "prune": self.pruning or "none",
                "quantize": self.quantization or "none",
                "explicit_attention": self.explicit_attention or "none",
                "frozen_batch_norms": getattr(self, "thawed", []),
            },
        )
        report_dir = self.work / "report"
        written = write_report(report, report_dir)
        if self.pruning is not None:
            with open(report_dir / "report.md", "a", encoding="utf-8") as md:
                md.write(pruning_markdown(self.pruning))
        if self.quantization is not None:
            with open(report_dir / "report.md", "a", encoding="utf-8") as md:
                md.write(quantization_markdown(self.quantization, self.layers))
        if self.pruning is not None and "sensitivity" in self.pruning:
            written.append(write_sensitivity(self.pruning["sensitivity"], report_dir))
        save_weights(self.built, self.work / "weights.safetensors")
        files: dict[str, Path] = {"model.onnx": self.onnx["built"], "weights.safetensors": self.work / "weights.safetensors"}
        for p in written:
            files[p.relative_to(report_dir).as_posix()] = p
        # GPU targets: the trtexec command and build_engine.sh (an engine too where TensorRT runs here).
        from .export.tensorrt import bundle_tensorrt, tensorrt_precision

        trt_files, trt_entry = bundle_tensorrt(
            t, self.spec, self.onnx["built"], self.work / "tensorrt",
            precision=tensorrt_precision(self.recipe.quantize.format),
            sparse=any(layer["pattern"] == "2:4" for layer in self.layers),
            batch_sizes=self.recipe.profile.batch_sizes)
        files.update(trt_files)
        config = getattr(self.built, "config", None)
        manifest = make_manifest(self.spec, policy_name=self.loaded.name, target=t.to_dict(),
                                 policy_reference=self.loaded.reference, policy_config=config,
                                 layers=self.layers, recipe=self.recipe.to_dict(),
                                 policy_architecture=self.architecture_delta())
        if trt_entry is not None:
            manifest["tensorrt"] = trt_entry
        self.report = report
        return write_bundle(self.output, files, manifest)

    def architecture_delta(self) -> dict[str, Any] | None:
        """How the built VLA's modules differ from its config's (structured pruning), else None."""
        from .models.vla import VLAPolicy
        from .prune.architecture import architecture_delta, is_identity

        built = getattr(self, "float_built", self.built)  # quantization swaps module types, not architecture
        if not isinstance(built, VLAPolicy):
            return None
        delta = architecture_delta(built, VLAPolicy(built.config, name=built.name))
        return None if is_identity(delta) else delta

    # run ----------------------------------------------------------------
    def run(self) -> BuildResult:
        import shutil

        from .models.explicit_attention import reference_attention

        try:
            with reference_attention():  # the original as trained, and as it exports (not the NaN-prone fast path)
                for name in STAGES[:-1]:
                    with self.progress.stage(name):
                        getattr(self, name)()
                with self.progress.stage("bundle"):
                    path = self.bundle()
        finally:
            for group in getattr(self, "runners", {}).values():
                for runner in group.values():
                    runner.close()
            if getattr(self, "task", None) is not None:  # a simulator's environments
                self.task.close()
            self._own_traces.close()
            shutil.rmtree(self.work, ignore_errors=True)
        return BuildResult(path, self.report, dict(self.progress.stage_seconds))


def build(request: BuildRequest, progress: Progress | None = None) -> BuildResult:
    """Run every stage of a build; return the bundle path and its report."""
    return Build(request, progress).run()
