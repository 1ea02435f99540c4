"""``edgevla search``: build a policy several ways for one target and pick the one to ship.

Each candidate is a compression in ``edgevla build``'s shorthands, joined by
``+``: a pruning (``2:4``, ``unstructured:0.8``, ``structured:0.3:blocks`` ...)
and / or a quantization format (``w8a8``, ``w4a16`` ...), e.g. ``2:4+w8a8``.
Every candidate is a whole build over the same recipe (target, recipe file,
``--set`` values), gated like any build; a candidate that fails its gate is
recorded with the reason and the search goes on. The built bundles are then
compared (:mod:`edgevla.compare`) and the pick is the highest E(M) within every
budget of the target (and, with ``tolerate``, proven at that latency).
``search.json`` in the output directory records every candidate, the
comparison and the pick.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .bench import write_json
from .errors import EdgevlaError
from .progress import Progress
from .recipe import QUANTIZE_FORMATS, ToleranceConfig, prune_shorthand, quantize_shorthand


def candidate_overrides(candidate: str) -> dict[str, Any]:
    """The recipe overrides of a candidate: ``2:4+w8a8`` -> the ``--prune 2:4 --quantize w8a8`` ones. A part
    that is not a quantization format must be a pruning shorthand; one of each at most."""
    parts = [p.strip() for p in str(candidate).split("+")]
    if not all(parts):
        raise EdgevlaError(f"search candidate {candidate!r}: expected PRUNE, FORMAT or PRUNE+FORMAT like 2:4+w8a8")
    formats = [p for p in parts if p.lower() in QUANTIZE_FORMATS]
    prunings = [p for p in parts if p.lower() not in QUANTIZE_FORMATS]
    if len(formats) > 1 or len(prunings) > 1:
        raise EdgevlaError(f"search candidate {candidate!r}: one pruning and one quantization format at most")
    overrides: dict[str, Any] = {}
    if prunings:
        overrides.update(prune_shorthand(prunings[0], f"search candidate {candidate!r}"))
    if formats:
        overrides.update(quantize_shorthand(formats[0], f"search candidate {candidate!r}"))
    return overrides


def _measuring(tolerance: ToleranceConfig, tolerate: tuple[str, int] | None) -> dict[str, Any]:
    """Overrides that make a build measure the latency tolerance ``tolerate`` asks about, where its recipe's
    ``evaluate.tolerance`` (``tolerance``) would not: the ticks raised to it, the schedule added."""
    if tolerate is None:
        return {}
    schedule, ticks = tolerate
    more: dict[str, Any] = {}
    if tolerance.max_ticks < ticks:
        more["evaluate.tolerance.max_ticks"] = ticks
    if schedule not in tolerance.schedules:
        more["evaluate.tolerance.schedules"] = [*tolerance.schedules, schedule]
    return more


def slug(candidate: str) -> str:
    """A directory name for a candidate's bundle: ``2:4+w8a8`` -> ``2_4+w8a8``."""
    return candidate.replace(":", "_").replace("/", "_")


def search(target: str, candidates: Sequence[str], output: str | Path, *, policy: str | None = None,
           recipe: str | None = None, overrides: Mapping[str, Any] | None = None, allow_pickle: bool = False,
           tolerate: tuple[str, int] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Build every candidate into ``output``/<slug>, compare what was built, pick; write ``search.json``."""
    from .compare import compared, row_of
    from .original_memo import OriginalMemo
    from .pipeline import BuildRequest, build
    from .recipe import load_recipe
    from .targets import load_target

    if not candidates:
        raise EdgevlaError("search needs a candidate or more (--try)")
    if len(set(candidates)) != len(candidates):
        raise EdgevlaError(f"search: a candidate is listed twice in {list(candidates)}")
    # Every candidate's recipe checked before any build: a bad target, recipe or value stops the search at once.
    plans = [(c, {**(overrides or {}), **candidate_overrides(c)}) for c in candidates]
    board = load_target(target)
    for _, plan in plans:
        plan.update(_measuring(load_recipe(recipe, board, plan).evaluate.tolerance, tolerate))
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise EdgevlaError(f"search output {str(out)!r} is a file")
    records: list[dict[str, Any]] = []
    with OriginalMemo() as memo:  # the original's ONNX and closed-loop runs, made by the first build that needs them
        for candidate, plan in plans:
            started = time.perf_counter()
            request = BuildRequest(target=target, policy=policy, recipe=recipe, output=str(out / slug(candidate)),
                                   overrides=plan, allow_pickle=allow_pickle, memo=memo)
            if progress is not None:
                progress.note(f"candidate {candidate}")
            try:
                bundle, error = str(build(request, progress).bundle), None
            except EdgevlaError as e:  # a gate that failed, or a build this candidate cannot make: recorded
                bundle, error = None, str(e)
            records.append({"candidate": candidate, "bundle": bundle, "error": error,
                            "seconds": time.perf_counter() - started})
    built = [r["bundle"] for r in records if r["bundle"] is not None]
    comparison = compared([row_of(b) for b in built], tolerate) if built else None
    result = {"target": target, "policy": policy, "candidates": records,
              "compare": comparison, "pick": comparison["pick"] if comparison else None}
    write_json(result, out / "search.json")  # whole or not at all
    return result
