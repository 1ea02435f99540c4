"""Running a fused graph: a list of bound steps per input shape, over buffers planned once.

The graph's values live in a flat list of slots (constants filled in once).
Each node becomes a *step*: its compiled op plus the slots it reads and
writes. The first call with a new set of input shapes (a *signature*: the
batch size, in practice) is a tracing run: every op allocates its own
output, and the executor records each value's shape and dtype and whether it
is a view of another value (Reshape, Slice, Split, ...). From that it plans
the buffers:

* every op that can write into ``out`` gets a preallocated buffer;
* a buffer is reused by a later step once the last reader of its value, and
  of every view of it, has run (greedy, by exact shape and dtype);
* a step's output never shares a buffer with its own inputs (outputs are
  assigned before the step's dead inputs are released).

Steps whose every input is fixed once the input shapes are (constants, the
``Shape`` or ``Size`` of any value, and what is computed from those only) ran
in the tracing run for the last time: their values are kept with the
signature, and later calls skip them, and so every step whose values only
such steps read. Exported graphs are full of these: a
causal mask built from ``Shape(x)`` in every layer, a sampler's timesteps
expanded to the batch and embedded, reshapes' target shapes.

Later calls with that signature run the bound steps with no allocation of
their own beyond NumPy temporaries inside a few ops. Graph outputs are
copied out, since their buffers are reused by the next call. A few
signatures are kept (least recently used dropped).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import EdgevlaError
from . import ops
from .attention import ATTENTION_OP, HEADS_VIEW_OP
from .conv import CONV_OP
from .fusion import LINEAR_OP, QUANTIZE_TOKENS_OP
from .graph import Graph, Node
from .gated import GATED_OP
from .group_norm import GROUP_NORM_OP
from .linear import quantize_tokens
from .norms import LAYER_NORM_S8_OP
from .rotary import ROTARY_OP
from .siblings import COLUMNS_OP

MAX_SIGNATURES = 4

#: Ops whose output depends only on their input's shape.
SHAPE_OF = ("Shape", "Size")


@dataclass(frozen=True)
class Step:
    node: Node
    fn: Callable
    writes_out: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class Program:
    """A fused graph compiled to steps; ``run`` maps input arrays to output arrays."""

    def __init__(self, graph: Graph):
        self.graph = graph
        slots: dict[str, int] = {"": 0}
        template: list[object] = [None]

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(template)
                template.append(graph.constants.get(name))
            return slots[name]

        self.input_slots = [slot(v.name) for v in graph.inputs]
        self.steps: list[Step] = []
        for node in graph.nodes:
            consts = [graph.constants.get(i) if i else None for i in node.inputs]
            if node.op_type == LINEAR_OP:
                layer = node.attrs["layer"]
                if layer.has_output_stage:
                    keep_float = len(node.outputs) == 2 or layer.codes_scale is None
                    fn, writes_out = layer.stage_step(keep_float), False
                else:
                    fn, writes_out = (layer.with_residual if layer.residual else layer), True
            elif node.op_type == CONV_OP:
                fn, writes_out = node.attrs["conv"], False
            elif node.op_type == ATTENTION_OP:
                fn, writes_out = node.attrs["attention"], True
            elif node.op_type == QUANTIZE_TOKENS_OP:
                fn, writes_out = quantize_tokens, False
            elif node.op_type == LAYER_NORM_S8_OP:
                fn, writes_out = node.attrs["norm"], True
            elif node.op_type == GROUP_NORM_OP:
                fn, writes_out = node.attrs["norm"], False
            elif node.op_type == ROTARY_OP:
                fn, writes_out = node.attrs["rotary"], True
            elif node.op_type == GATED_OP:
                fn, writes_out = node.attrs["gated"], True
            elif node.op_type == COLUMNS_OP:
                fn, writes_out = node.attrs["columns"], False
            elif node.op_type == HEADS_VIEW_OP:
                fn, writes_out = node.attrs["view"], False
            else:
                kernel = ops.compile_op(node.op_type, node.attrs, consts, graph.opset, len(node.outputs),
                                        node.describe())
                fn, writes_out = kernel.fn, kernel.writes_out and len(node.outputs) == 1
            self.steps.append(Step(node, fn, writes_out, tuple(slot(i) for i in node.inputs),
                                   tuple(slot(o) for o in node.outputs)))
        self.output_slots = [slot(o) for o in graph.outputs]
        self.template = template
        self._constant_slots = {s for n, s in slots.items() if n in graph.constants}
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        signature = tuple((a.shape, a.dtype.str) for a in inputs)
        bound = self._bound.get(signature)
        if bound is None:
            env = self._fresh_env(self.template, inputs)
            trace = self._trace(env)
            self._bound[signature] = _Bound(self, trace, env)
            while len(self._bound) > MAX_SIGNATURES:
                self._bound.popitem(last=False)
            return [np.array(env[s], copy=True) for s in self.output_slots]
        self._bound.move_to_end(signature)
        env = self._fresh_env(bound.template, inputs)
        bound.run(env)
        return [np.array(env[s], copy=True) for s in self.output_slots]

    def time_steps(self, inputs: Sequence[np.ndarray], runs: int) -> list[tuple[Node, float]]:
        """Median seconds of every step a call runs over ``runs`` calls (after one warm-up), bound buffers
        included; the steps fixed per signature run no more and are not listed."""
        self.run(inputs)
        bound = self._bound[tuple((a.shape, a.dtype.str) for a in inputs)]
        samples = np.zeros((runs, len(bound.steps)))
        for r in range(runs):
            env = self._fresh_env(bound.template, inputs)
            for i, f in enumerate(bound.closures):
                t0 = time.perf_counter()
                f(env)
                samples[r, i] = time.perf_counter() - t0
        return list(zip((s.node for s in bound.steps), np.median(samples, axis=0).tolist()))

    def _fresh_env(self, template: list[object], inputs: Sequence[np.ndarray]) -> list[object]:
        env = template.copy()
        for s, a in zip(self.input_slots, inputs):
            env[s] = a
        return env

    def _trace(self, env: list[object]) -> "_Trace":
        """Run once allocating freely; record shapes and which values are views of which buffers."""
        trace = _Trace()
        for s in self.input_slots:
            trace.roots[s] = frozenset()
        for s in self._constant_slots:
            trace.roots[s] = frozenset()
        for index, step in enumerate(self.steps):
            args = [env[i] for i in step.inputs]
            result = _call(step, args)
            results = result if isinstance(result, tuple) else (result,)
            if len(results) < len(step.outputs):
                raise EdgevlaError(f"{step.node.describe()} gave {len(results)} outputs, the graph reads "
                                   f"{len(step.outputs)}")
            for i in step.inputs:
                trace.read(i, index)
            for o, value in zip(step.outputs, results):
                value = np.asarray(value)
                env[o] = value
                aliases = frozenset().union(*(trace.roots.get(i, frozenset()) for i, a in zip(step.inputs, args)
                                              if isinstance(a, np.ndarray) and np.may_share_memory(a, value)))
                if aliases:
                    trace.roots[o] = aliases
                elif step.writes_out:
                    trace.own(o, index, value)
                else:
                    trace.roots[o] = frozenset()
        for s in self.output_slots:
            trace.read(s, len(self.steps))
        return trace


def _call(step: Step, args: list) -> object:
    try:
        return step.fn(*args)
    except EdgevlaError:
        raise
    except Exception as e:  # NumPy errors on shapes the model did not expect
        raise EdgevlaError(f"the native backend failed at {step.node.describe()}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from e


class _Trace:
    """Per slot: the planned buffers it may view (roots), and per buffer its shape and last reader."""

    def __init__(self) -> None:
        self.roots: dict[int, frozenset[int]] = {}
        self.owned: dict[int, tuple[int, tuple[int, ...], np.dtype]] = {}  # slot -> (step, shape, dtype)
        self.last_read: dict[int, int] = {}

    def own(self, slot: int, step: int, value: np.ndarray) -> None:
        self.roots[slot] = frozenset((slot,))
        self.owned[slot] = (step, value.shape, value.dtype)
        self.last_read[slot] = step

    def read(self, slot: int, step: int) -> None:
        for root in self.roots.get(slot, ()):
            self.last_read[root] = max(self.last_read[root], step)


class _Bound:
    """The steps of one signature with their output buffers bound, and the values fixed by it (``template``:
    the constants and those values; ``steps``: the rest, which a call runs)."""

    def __init__(self, program: Program, trace: _Trace, traced: list[object]):
        fixed = _fixed_by_signature(program, traced)
        buffers = _assign_buffers(program.steps, trace)
        self.template = program.template.copy()
        for slot, value in fixed.items():
            self.template[slot] = value
        self.steps = _needed([step for step in program.steps if step.outputs[0] not in fixed], program.output_slots)
        self.closures = [_bind(step, buffers.get(step.outputs[0]) if step.writes_out else None)
                         for step in self.steps]
        self.bytes = sum(b.nbytes for b in {id(b): b for b in buffers.values()}.values())

    def run(self, env: list[object]) -> None:
        closures = self.closures
        try:
            for f in closures:
                f(env)
        except EdgevlaError:
            raise
        except Exception as e:
            step = next((s for s in self.steps if env[s.outputs[0]] is None), self.steps[-1])  # the first not done
            raise EdgevlaError(f"the native backend failed at {step.node.describe()}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from e


def _fixed_by_signature(program: Program, traced: list[object]) -> dict[int, np.ndarray]:
    """The values of the tracing run (``traced``) that every call with its input shapes computes alike, by slot:
    outputs of SHAPE_OF steps and of steps reading only constants and such values. Kept read-only."""
    fixed_slots = set(program._constant_slots) | {0}  # slot 0: an absent optional input
    fixed: dict[int, np.ndarray] = {}
    for step in program.steps:
        if step.node.op_type in SHAPE_OF or (step.inputs and all(i in fixed_slots for i in step.inputs)):
            for o in step.outputs:
                value = np.array(traced[o], copy=True)
                value.setflags(write=False)
                fixed[o] = value
                fixed_slots.add(o)
    return fixed


def _needed(running: list[Step], outputs: Sequence[int]) -> list[Step]:
    """The running steps a graph output depends on: a value read only by steps fixed per signature (the
    ``Shape`` of a repeated key whose attention reads the unrepeated one) is not computed again."""
    wanted, kept = set(outputs), []
    for step in reversed(running):
        if any(o in wanted for o in step.outputs):
            kept.append(step)
            wanted.update(step.inputs)
    return kept[::-1]


def _assign_buffers(steps: Sequence[Step], trace: _Trace) -> dict[int, np.ndarray]:
    free: dict[tuple, list[np.ndarray]] = {}
    release_at: dict[int, list[int]] = {}
    for root, last in trace.last_read.items():
        release_at.setdefault(last, []).append(root)
    assigned: dict[int, np.ndarray] = {}
    for index, step in enumerate(steps):
        for o in step.outputs:
            if o in trace.owned:
                _, shape, dtype = trace.owned[o]
                pool = free.get((shape, dtype.str))
                assigned[o] = pool.pop() if pool else np.empty(shape, dtype)
        for root in release_at.get(index, ()):
            buf = assigned.get(root)
            if buf is not None:
                free.setdefault((buf.shape, buf.dtype.str), []).append(buf)
    return assigned


def _bind(step: Step, out: np.ndarray | None) -> Callable[[list], None]:
    fn, ins, outs = step.fn, step.inputs, step.outputs
    if len(outs) > 1:
        def run_multi(env):
            for o, v in zip(outs, fn(*[env[i] for i in ins])):
                env[o] = v
        return run_multi
    (o,) = outs
    if out is None:
        if len(ins) == 1:
            (a,) = ins

            def run1(env):
                env[o] = fn(env[a])
            return run1
        if len(ins) == 2:
            a, b = ins

            def run2(env):
                env[o] = fn(env[a], env[b])
            return run2

        def run_n(env):
            env[o] = fn(*[env[i] for i in ins])
        return run_n
    if len(ins) == 1:
        (a,) = ins

        def run1_out(env):
            env[o] = fn(env[a], out=out)
        return run1_out
    if len(ins) == 2:
        a, b = ins

        def run2_out(env):
            env[o] = fn(env[a], env[b], out=out)
        return run2_out

    def run_n_out(env):
        env[o] = fn(*[env[i] for i in ins], out=out)
    return run_n_out
