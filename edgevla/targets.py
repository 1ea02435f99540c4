"""Hardware targets: what a device can do (facts), what a build must meet there (budgets),
and how to build for it by default (recipe).

One YAML file per target lives in the package's ``targets`` data folder; each
figure in it cites its source. A user can also pass a path to their own file,
checked by the same schema. Files are parsed once and cached.

The roofline helpers turn facts into the two numbers a latency floor needs:
peak arithmetic rate for a precision and memory bandwidth. A layer's time is
at least ``max(bytes / bandwidth, flops / peak)``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .errors import EdgevlaError
from .recipe import RECIPE_SCHEMA, Recipe
from .schema import (Bool, Float, Int, ListOf, MapOf, Nullable, OneOf, Overlay, Section, Str, parse_yaml,
                     read_text, validate)

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8", "int4", "fp4")
#: The native backend's CPU kernel tables (edgevla.native), per host architecture.
NATIVE_KERNEL_TABLES = {"x86_64": ("avx512_amx", "avx512_vnni", "avx_vnni", "avx2", "generic"),
                        "aarch64": ("neon_dot", "generic")}
# fp32 is the plain vector/SIMT rate; every other precision has a dense and a 2:4-sparse peak.
PEAK_KEYS = ("fp32",) + tuple(f"{p}_{kind}" for p in PRECISIONS[1:] for kind in ("dense", "sparse"))
_NAME = r"[a-z0-9][a-z0-9-]*"
_VERSION = Str(r"\d+(\.\d+)*", hint="'12.6'")

TARGET_SCHEMA = Section({
    "name": Str(_NAME, hint="'jetson-agx-orin'"),
    "aliases": ListOf(Str(_NAME, hint="'jetson-orin'"), unique=True, default=[]),
    "description": Str(),
    "kind": OneOf("gpu", "cpu"),
    "host_arch": OneOf("x86_64", "aarch64"),
    "facts": Section({
        "compute_capability": Nullable(Str(r"\d+\.\d+", hint="'8.7'")),
        "cuda_arch": Nullable(Str(r"sm_\d+", hint="'sm_87'")),
        "precisions": ListOf(OneOf(*PRECISIONS), min_len=1, unique=True),
        "sparse_tensor_cores": Bool(default=False),
        "dla_count": Int(0, default=0),
        "memory_gb": Float(0, min_open=True),
        "memory_bandwidth_gbps": Float(0, min_open=True),
        "peak_tflops": MapOf(OneOf(*PEAK_KEYS), Float(0, min_open=True), min_len=1),  # TOPS for integers
        "jetpack": Nullable(_VERSION),
        "tensorrt": Nullable(_VERSION),
        "cuda": Nullable(_VERSION),
        # kernels: the native kernel table the reference CPU runs
        "cpu": Section({"arch": Str(), "cores": Int(1), "model": Str(),
                        "kernels": Nullable(OneOf(*dict.fromkeys(sum(NATIVE_KERNEL_TABLES.values(), ()))))}),
        "preferred_channel_multiple": OneOf(8, 16),
    }),
    "budgets": Section({
        "control_rate_hz": Float(0, min_open=True),
        "latency_budget_ms": Float(0, min_open=True),
        "memory_budget_mb": Int(1),
        "max_accuracy_loss": Float(0, 1),  # success-rate drop allowed, as a fraction
    }),
    "recipe": Overlay(RECIPE_SCHEMA),
})


@dataclass(frozen=True)
class CpuFacts:
    arch: str
    cores: int
    model: str
    kernels: str | None = None  # the native kernel table of the reference CPU (edgevla.native.get_isa)


@dataclass(frozen=True)
class Facts:
    compute_capability: str | None
    cuda_arch: str | None
    precisions: tuple[str, ...]
    sparse_tensor_cores: bool
    dla_count: int
    memory_gb: float
    memory_bandwidth_gbps: float
    peak_tflops: Mapping[str, float]  # read-only; TFLOPS, TOPS for int8/int4
    jetpack: str | None
    tensorrt: str | None
    cuda: str | None
    cpu: CpuFacts
    preferred_channel_multiple: int


@dataclass(frozen=True)
class Budgets:
    control_rate_hz: float
    latency_budget_ms: float
    memory_budget_mb: int
    max_accuracy_loss: float

    @property
    def control_period_ms(self) -> float:
        return 1000.0 / self.control_rate_hz


@dataclass(frozen=True)
class Target:
    name: str
    aliases: tuple[str, ...]
    description: str
    kind: str
    host_arch: str
    facts: Facts
    budgets: Budgets
    recipe: dict[str, Any] = field(repr=False)  # a partial recipe layer; shared by the cache: do not mutate
    source_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The target as plain data, for a build manifest."""
        facts = {**self.facts.__dict__, "precisions": list(self.facts.precisions),
                 "peak_tflops": dict(self.facts.peak_tflops), "cpu": dict(self.facts.cpu.__dict__)}
        return {"name": self.name, "aliases": list(self.aliases), "description": self.description,
                "kind": self.kind, "host_arch": self.host_arch, "facts": facts,
                "budgets": dict(self.budgets.__dict__), "recipe": copy.deepcopy(self.recipe),
                "source_path": self.source_path}


def _check_consistency(d: dict[str, Any], where: str) -> None:
    """Rules across fields, each a mistake seen or easy to make when writing a profile."""
    facts, budgets = d["facts"], d["budgets"]

    def fail(message: str) -> None:
        raise EdgevlaError(f"{where}: {message}")

    period_ms = 1000.0 / budgets["control_rate_hz"]
    if budgets["latency_budget_ms"] > period_ms:
        fail(f"budgets.latency_budget_ms: {budgets['latency_budget_ms']:g} ms does not fit the "
             f"{period_ms:.4g} ms period of a {budgets['control_rate_hz']:g} Hz control loop")
    if budgets["memory_budget_mb"] > facts["memory_gb"] * 1024:
        fail(f"budgets.memory_budget_mb: {budgets['memory_budget_mb']} MB is more than the device's "
             f"{facts['memory_gb']:g} GB")

    if d["kind"] == "gpu":
        for key in ("compute_capability", "cuda_arch", "cuda"):
            if facts[key] is None:
                fail(f"facts.{key}: a gpu target needs it")
        if facts["cuda_arch"] != "sm_" + facts["compute_capability"].replace(".", ""):
            fail(f"facts.cuda_arch {facts['cuda_arch']!r} does not match compute_capability "
                 f"{facts['compute_capability']!r}")
    else:
        for key in ("compute_capability", "cuda_arch", "cuda", "tensorrt"):
            if facts[key] is not None:
                fail(f"facts.{key}: a cpu target has none (got {facts[key]!r})")
        if facts["sparse_tensor_cores"] or facts["dla_count"]:
            fail("facts: a cpu target has no sparse tensor cores and no DLA")

    kernels = facts["cpu"]["kernels"]
    if kernels is not None and kernels not in NATIVE_KERNEL_TABLES[d["host_arch"]]:
        fail(f"facts.cpu.kernels: {kernels!r} is not one of the {d['host_arch']} kernel tables "
             f"({', '.join(NATIVE_KERNEL_TABLES[d['host_arch']])})")

    peaks, precisions = facts["peak_tflops"], facts["precisions"]
    for precision in precisions:
        if _peak_key(precision, sparse=False) not in peaks:
            fail(f"facts.peak_tflops: {precision} is listed in precisions but has no "
                 f"{_peak_key(precision, sparse=False)} peak")
    for key, value in peaks.items():
        precision, _, kind = key.partition("_")
        if precision not in precisions:
            fail(f"facts.peak_tflops.{key}: {precision} is not in precisions ({', '.join(precisions)})")
        if kind == "sparse":
            if not facts["sparse_tensor_cores"]:
                fail(f"facts.peak_tflops.{key}: a sparse peak needs sparse_tensor_cores: true")
            dense = peaks[f"{precision}_dense"]
            if value <= dense:
                fail(f"facts.peak_tflops.{key}: {value:g} is not above the dense peak {dense:g}")

    # The target's recipe layer must give a valid recipe over the built-in defaults.
    Recipe.from_dict(d["recipe"], f"{where}: recipe")


def _parse(text: str, where: str, source: str) -> Target:
    data = validate(TARGET_SCHEMA, parse_yaml(text, where), where)
    _check_consistency(data, where)
    f = data["facts"]
    facts = Facts(**{**f, "precisions": tuple(f["precisions"]), "peak_tflops": MappingProxyType(f["peak_tflops"]),
                     "cpu": CpuFacts(**f["cpu"])})
    return Target(name=data["name"], aliases=tuple(data["aliases"]), description=data["description"],
                  kind=data["kind"], host_arch=data["host_arch"], facts=facts, budgets=Budgets(**data["budgets"]),
                  recipe=data["recipe"], source_path=source)


@functools.lru_cache(maxsize=1)
def _builtin_index() -> dict[str, Target]:
    """Every built-in target under its name and each alias (lower case)."""
    folder = importlib.resources.files("edgevla") / "targets"
    index: dict[str, Target] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        where = f"target {entry.name}"
        target = _parse(entry.read_text(encoding="utf-8"), where, str(entry))
        if target.name != entry.name.removesuffix(".yaml"):
            raise EdgevlaError(f"{where}: name {target.name!r} must match the file name")
        for key in (target.name, *target.aliases):
            if key in index:
                raise EdgevlaError(f"{where}: {key!r} is already the name or an alias of {index[key].name!r}")
            index[key] = target
    return index


@functools.lru_cache(maxsize=32)
def _load_file(path: str, mtime_ns: int) -> Target:
    # mtime_ns is part of the cache key only: an edited file is parsed again.
    where = f"target {path}"
    return _parse(read_text(path, where), where, path)


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A built-in target by name or alias (case-insensitive), or a user's target YAML file by path."""
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise EdgevlaError(f"target file {text!r} does not exist")
        return _load_file(str(path), path.stat().st_mtime_ns)
    index = _builtin_index()
    key = text.strip().lower()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise EdgevlaError(f"unknown target {text!r} ({hint}known: {', '.join(target_names())}; "
                       "or give the path of a target .yaml file)")


def list_targets() -> list[Target]:
    """The built-in targets, sorted by name."""
    return sorted({t.name: t for t in _builtin_index().values()}.values(), key=lambda t: t.name)


def target_names() -> list[str]:
    return [t.name for t in list_targets()]


def _peak_key(precision: str, sparse: bool) -> str:
    # Plain fp32 runs on vector units/CUDA cores: it has one peak and no sparse one ("fp32_sparse" never exists).
    if precision == "fp32" and not sparse:
        return "fp32"
    return f"{precision}_{'sparse' if sparse else 'dense'}"


def roofline_peak(target: Target, precision: str, sparse: bool = False) -> float:
    """Peak arithmetic rate in FLOP/s (OP/s for integers) of ``target`` at ``precision``.

    Dense unless ``sparse`` (2:4 structured sparsity on tensor cores) is asked for.
    A precision the hardware does not run fast is an error, not a slow guess:
    the roofline is only meaningful for a precision the build can actually use.
    """
    if precision not in PRECISIONS:
        raise EdgevlaError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision not in target.facts.precisions:
        raise EdgevlaError(f"target {target.name} has no fast {precision} "
                           f"(it runs {', '.join(target.facts.precisions)})")
    key = _peak_key(precision, sparse)
    if key not in target.facts.peak_tflops:
        raise EdgevlaError(f"target {target.name} has no 2:4-sparse {precision} peak")
    return target.facts.peak_tflops[key] * 1e12


def bandwidth_bytes_per_s(target: Target) -> float:
    """Peak DRAM bandwidth in bytes/s (vendor GB/s are decimal: 1e9 bytes)."""
    return target.facts.memory_bandwidth_gbps * 1e9
