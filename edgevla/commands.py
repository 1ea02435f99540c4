"""What each ``edgevla`` subcommand does (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import EdgevlaError, GateFailed

class _Out:
    """stdout through rich; wide enough off a terminal that tables are not cut."""

    def print(self, *args, **kwargs) -> None:
        Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(*args, **kwargs)


out = _Out()


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- build


def cmd_build(args: argparse.Namespace) -> int:
    from .pipeline import BuildRequest, build
    from .progress import ConsoleProgress, Progress
    from .recipe import parse_assignments, prune_shorthand, quantize_shorthand

    overrides = parse_assignments(args.set)  # --prune, --quantize, --episodes and --env say more and win
    if args.env is not None:
        overrides["evaluate.env"] = args.env
    if args.prune is not None:  # checked before any slow work
        overrides.update(prune_shorthand(args.prune))
    if args.quantize is not None:
        overrides.update(quantize_shorthand(args.quantize))
    if args.episodes is not None:
        overrides["evaluate.episodes"] = args.episodes
    request = BuildRequest(target=args.target, policy=args.policy, recipe=args.recipe, output=args.output,
                           overrides=overrides, allow_pickle=args.allow_pickle)
    result = build(request, Progress() if args.json else ConsoleProgress())
    cmp = result.report["comparison"]
    summary = {
        "bundle": str(result.bundle),
        "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
        "success_rate": {"original": cmp["success_rate"]["original"], "built": cmp["success_rate"]["built"]},
        "latency_p50_ms": {"original": cmp["latency_p50_ms"]["original"], "built": cmp["latency_p50_ms"]["built"]},
        "verify": result.report["extra"]["verify"],
    }
    if args.json:
        _json(summary)
    else:
        out.print(f"[bold green]bundle written:[/bold green] {result.bundle}")
        out.print(f"report: {result.bundle / 'report.md'}")
    return 0


# --------------------------------------------------------------------------- eval


def _check_device(args: argparse.Namespace) -> None:
    from .deploy import no_tactics_here

    if args.device != "auto" and args.backend != "native":
        raise EdgevlaError(f"--device {args.device} applies to --backend native only "
                           f"(backend {args.backend!r} decides its own device)")
    if args.kernel_tactics is not None and args.backend != "native":
        no_tactics_here(args.kernel_tactics)


def _runner_device(runner) -> str:
    """Where a runner computes: ``"cuda"`` for the native backend on a GPU, else ``"cpu"``."""
    from .backends import CudaNativeRunner

    return "cuda" if isinstance(runner, CudaNativeRunner) else "cpu"


def cmd_eval(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .deploy import bundle_runner
    from .pipeline import action_fn
    from .progress import ConsoleProgress
    from .task import evaluate

    if args.episodes < 1:
        raise EdgevlaError("--episodes must be >= 1")
    _check_device(args)
    bundle = load_bundle(args.bundle)
    if args.ensemble is not None and args.execute is not None:
        raise EdgevlaError("--execute does not apply to --ensemble: every chunk's prediction for a tick is used")
    execute = 4 if args.execute is None else args.execute
    _check_execute(execute, bundle.spec.chunk_size)
    task = _eval_task(bundle, args.env, execute, args.env_workers)
    if args.realtime or args.lead is not None:
        return _eval_realtime(args, bundle, task, execute)
    draws, measured = None, None
    if args.latency_from is not None:  # each query's ticks drawn from a profile's samples; async leads by their p99
        draws, measured = _measured_latency(args.latency_from, bundle.spec.control_rate_hz)
        latencies = [(None, measured["lead_ticks"])]
    else:
        latencies = _eval_latencies(args, bundle.spec.control_rate_hz)
    runner = bundle_runner(bundle, args.backend, args.threads, device=args.device, tactics=args.kernel_tactics)
    progress = ConsoleProgress()
    rows = []
    try:
        for latency_ms, ticks in latencies:
            what = f"{args.episodes} episodes" + ("" if ticks is None else f", latency {ticks} tick(s)")
            with progress.task(what, args.episodes) as advance:
                result = evaluate(action_fn(runner), task, episodes=args.episodes, seed=args.seed,
                                  execute=execute, progress=advance, latency_ticks=ticks or 0,
                                  asynchronous=args.asynchronous, ensemble=args.ensemble, latency_draws=draws)
            rows.append((latency_ms, ticks, result))
    finally:
        runner.close()
        task.close()
    schedule = "ensemble" if args.ensemble is not None else "async" if args.asynchronous else "sync"
    data = {"bundle": str(Path(args.bundle)), "backend": args.backend, "device": _runner_device(runner),
            "seed": args.seed, "schedule": schedule, "task": task.name}
    data.update({"ensemble_m": args.ensemble} if args.ensemble is not None else {"execute": execute})
    if measured is not None:
        data.update({"control_rate_hz": bundle.spec.control_rate_hz, "measured_latency": measured,
                     **rows[0][2].to_dict()})
    elif latencies[0][1] is None:
        data.update(rows[0][2].to_dict())
    else:
        data.update({"control_rate_hz": bundle.spec.control_rate_hz,
                     "latencies": [{"latency_ms": ms, "latency_ticks": ticks, **result.to_dict()}
                                   for ms, ticks, result in rows]})
    if getattr(runner, "tactics", None) is not None:
        data["kernel_tactics"] = runner.tactics_summary()
    if args.json:
        _json(data)
        return 0
    where = f"{args.backend}{' on the GPU' if data['device'] == 'cuda' else ''}"
    if args.ensemble is not None:
        where += f", temporal ensembling m = {args.ensemble:g}"
    for latency_ms, ticks, result in rows:
        latency = _measured_latency_said(measured, schedule) if measured is not None else "" if ticks is None else (
            f"latency {ticks} tick(s)" + ("" if latency_ms is None else f" ({latency_ms:g} ms)")
            + f", {schedule}: ")
        low, high = result.success_ci95
        out.print(f"{latency}success {result.success_rate:.1%} over {result.episodes} episodes (95 % interval "
                  f"{low:.1%}-{high:.1%}; {where}); mean steps {result.mean_steps:.1f}; smoothness "
                  f"{result.smoothness:.4f}")
    return 0


def _eval_realtime(args: argparse.Namespace, bundle, task, execute: int) -> int:
    """``edgevla eval --realtime``: the episodes one at a time in real time at the policy's control rate."""
    from .deploy import bundle_runner
    from .pipeline import action_fn
    from .progress import ConsoleProgress
    from .task import evaluate
    from .task.realtime import evaluate_realtime

    if not args.realtime:
        raise EdgevlaError("--lead sets the schedule of the real-time loop: give --realtime too (with a modelled "
                           "latency, --async leads by it)")
    if args.asynchronous:
        raise EdgevlaError("--realtime: the asynchronous schedule is --lead N (ticks before the chunk is spent)")
    if args.lead is not None and args.lead < 0:
        raise EdgevlaError(f"--lead must be >= 0, got {args.lead}")
    if args.lead is not None and args.ensemble is not None:
        raise EdgevlaError("--lead does not apply to --ensemble: it queries as soon as the last chunk is in")
    rate = bundle.spec.control_rate_hz
    if not rate:
        raise EdgevlaError("--realtime runs the loop at the policy's control rate, and the bundle's manifest has none")
    runner = bundle_runner(bundle, args.backend, args.threads, device=args.device, tactics=args.kernel_tactics)
    try:
        with ConsoleProgress().task(f"{args.episodes} episodes in real time at {rate:g} Hz", args.episodes) as advance:
            r = evaluate_realtime(action_fn(runner), task, rate, episodes=args.episodes, seed=args.seed,
                                  execute=execute, lead=args.lead or 0, ensemble=args.ensemble, progress=advance)
        # The same episodes with every chunk in at once: what the real latency cost.
        instant = evaluate(action_fn(runner), task, episodes=args.episodes, seed=args.seed, execute=execute, batch=1,
                           ensemble=args.ensemble)
    finally:
        runner.close()
        task.close()
    data = {"bundle": str(Path(args.bundle)), "backend": args.backend, "device": _runner_device(runner),
            "seed": args.seed, "task": task.name, "realtime": r.to_dict(),
            "without_latency": instant.to_dict()}
    if args.json:
        _json(data)
        return 0
    d = data["realtime"]
    schedule = (f"temporal ensembling m = {args.ensemble:g}" if args.ensemble is not None
                else f"{d['schedule']}, {d['execute']} actions a chunk" + (f", lead {d['lead']}" if d["lead"] else ""))
    out.print(f"real time at {rate:g} Hz ({args.backend}, {schedule}): success {d['success_rate']:.1%} over "
              f"{d['episodes']} episodes; mean steps {d['mean_steps']:.1f}; held {d['held_per_episode']:.2f} ticks an "
              f"episode; chunk delay mean {d['mean_delay_ticks']:.2f}, max {d['max_delay_ticks']} ticks; command "
              f"p99 {d['command_ms']['p99']:.2f} ms; {d['overran']} of {d['ticks']} ticks overran the period")
    out.print(f"the same episodes without latency (every chunk in at once): success {instant.success_rate:.1%}, "
              f"mean steps {instant.mean_steps:.1f}")
    return 0


def _eval_task(bundle, env: str | None, execute: int, workers: int | None):
    """The closed-loop task of ``edgevla eval``: ``--env``, else the simulator the bundle was built with, else the
    tabletop task where the policy speaks it."""
    from .pipeline import task_for
    from .task.user_env import EnvTask

    if workers is not None and workers < 0:
        raise EdgevlaError(f"--env-workers must be >= 0, got {workers}")
    evaluate = bundle.manifest.get("recipe", {}).get("evaluate", {})
    env = env if env is not None else evaluate.get("env")
    if env is not None:
        workers = evaluate.get("env_workers", 0) if workers is None else workers
        return EnvTask(env, bundle.spec, max_steps=evaluate.get("env_max_steps", 1000), execute=execute,
                       workers=workers)
    if workers is not None:
        raise EdgevlaError("--env-workers steps a simulator's episodes, and this evaluation has none (--env)")
    task = task_for(bundle.spec)
    if task is None:
        raise EdgevlaError("this bundle's policy does not take the tabletop task's observations; closed-loop "
                           "evaluation needs a task that speaks them: give your simulator with --env module:factory")
    return task


def _check_execute(execute: int, chunk_size: int) -> None:
    if not 1 <= execute <= chunk_size:
        raise EdgevlaError(f"--execute must be in 1..{chunk_size} (the policy's chunk size), got {execute}")


def _eval_latencies(args: argparse.Namespace, control_rate_hz: float | None) -> list[tuple[float | None, int | None]]:
    """(milliseconds, ticks) per evaluation: [(None, None)] for none asked, ticks None meaning no latency model."""
    from .control import latency_ticks

    if args.latency_ticks is not None:
        if any(t < 0 for t in args.latency_ticks):
            raise EdgevlaError(f"--latency-ticks must be >= 0, got {args.latency_ticks}")
        return [(None, t) for t in args.latency_ticks]
    if args.latency_ms is not None:
        if not control_rate_hz:
            raise EdgevlaError("--latency-ms needs the bundle's control rate, and its manifest has none: "
                               "give --latency-ticks")
        return [(ms, latency_ticks(ms, control_rate_hz)) for ms in args.latency_ms]
    if args.asynchronous:
        raise EdgevlaError("--async schedules queries around a latency: give --latency-ms, --latency-ticks or "
                           "--latency-from")
    return [(None, None)]


def _measured_latency(path: str, control_rate_hz: float | None) -> tuple[list[int], dict[str, Any]]:
    """The ticks each latency sample of a profile's JSON misses at the policy's control rate, and what they
    are: their count, p50 / p99 / max in ms, the share of each tick count, and the p99's ticks (the lead)."""
    from collections import Counter

    from .control import latency_ticks
    from .metrics.latency import LatencyStats

    if not control_rate_hz:
        raise EdgevlaError("--latency-from needs the bundle's control rate, and its manifest has none")
    try:
        samples = json.loads(Path(path).read_text())["latency_samples_ms"]
    except OSError as e:
        raise EdgevlaError(f"cannot read {path!r}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise EdgevlaError(f"{path!r} is not the JSON of `edgevla profile ... --json` "
                           "(no latency_samples_ms)") from None
    if (not isinstance(samples, list) or not samples
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
                       for v in samples)):
        raise EdgevlaError(f"{path!r}: latency_samples_ms must be a non-empty list of milliseconds >= 0")
    draws = [latency_ticks(v, control_rate_hz) for v in samples]
    stats = LatencyStats.from_samples(samples)
    counts = Counter(draws)
    return draws, {"file": str(path), "samples": len(samples), "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms,
                   "max_ms": stats.max_ms, "lead_ticks": latency_ticks(stats.p99_ms, control_rate_hz),
                   "ticks_share": {str(t): counts[t] / len(draws) for t in sorted(counts)}}


def _measured_latency_said(measured: Mapping[str, Any], schedule: str) -> str:
    shares = ", ".join(f"{t}: {share:.0%}" for t, share in measured["ticks_share"].items())
    lead = f" leading by {measured['lead_ticks']}" if schedule == "async" else ""
    return (f"latency drawn from {measured['samples']} measured samples (p50 {measured['p50_ms']:.2f} ms, p99 "
            f"{measured['p99_ms']:.2f}, max {measured['max_ms']:.2f}; ticks {shares}), {schedule}{lead}: ")


# --------------------------------------------------------------------------- profile


def cmd_profile(args: argparse.Namespace) -> int:
    import tempfile

    from .control import latency_ticks
    from .metrics.latency import deadline_misses, measure_latency
    from .metrics.report import host_info
    from .targets import load_target

    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        raise EdgevlaError("--runs and --batch must be >= 1 and --warmup >= 0")
    _check_loop_args(args)
    _check_device(args)
    with tempfile.TemporaryDirectory(prefix="edgevla-profile-") as scratch, _thread_spin(args), _native_isa(args):
        runner, what, default_target = _profile_runner(args, Path(scratch))
        target = load_target(args.target or default_target)
        try:
            if args.loop:  # refused before any slow work
                _check_loop_fits(args, runner.spec)
            from .pipeline import batch_of, heldout_observations

            obs = batch_of(heldout_observations(runner.spec, max(args.batch, 8)), 0, args.batch)
            on_gpu = _runner_device(runner) == "cuda"
            if on_gpu:
                runner.reset_peak_memory()
            rate = target.budgets.control_rate_hz if args.paced else None
            stats = measure_latency(lambda: runner(obs), warmup=args.warmup, runs=args.runs, rate_hz=rate)
            loop = _robot_loop(args, runner, obs, stats) if args.loop else None
            plan = runner.plan() if args.backend == "native" else None
            gpu_memory = runner.memory_mb() if on_gpu else None
        finally:
            runner.close()
    deadline = deadline_misses(stats, target.budgets.control_rate_hz, target.budgets.latency_budget_ms)
    data = {"model": what, "backend": args.backend, "device": _runner_device(runner), "batch": args.batch,
            "target": target.name, "paced_hz": target.budgets.control_rate_hz if args.paced else None,
            "host": host_info(), "latency_ms": {k: v for k, v in stats.to_dict().items() if k != "samples_ms"},
            "latency_samples_ms": stats.samples_ms,  # in the order run: eval --latency-from draws from them
            "deadline": deadline.to_dict()}
    action_rate = runner.spec.control_rate_hz
    if action_rate:  # what a query of this latency costs the loop that executes the policy's chunks
        data["latency_ticks"] = {"control_rate_hz": action_rate,
                                 **{k: latency_ticks(getattr(stats, f"{k}_ms"), action_rate)
                                    for k in ("p50", "p99", "max")}}
        tolerance = _tolerance_fit(args.model, data["latency_ticks"]["p99"])
        if tolerance is not None:
            data["latency_tolerance"] = tolerance
    if loop is not None:
        data["robot_loop"] = loop
    if data["device"] == "cuda":  # replayed as CUDA graphs, or eager and why
        data["cuda_graphs"] = {"used": runner.graphed, "error": runner.graph_error}
        if runner.tactics is not None:  # which kernel variants ran, timed on this GPU
            data["kernel_tactics"] = runner.tactics_summary()
        data["gpu_memory_mb"] = {**gpu_memory, "budget": target.budgets.memory_budget_mb}
    if plan is not None:  # which kernel ran each linear layer, and why
        data["native_plan"] = [choice.to_dict() for choice in plan]
    if args.backend == "native" and data["device"] == "cpu":
        from . import native

        data["thread_spin_us"] = args.spin_us if args.spin_us is not None else native.get_thread_spin_us()
        data["native_isa"] = args.isa or native.get_isa()
        data["native_threads"] = args.threads or native.get_num_threads()
        data["allowed_cpus"] = native.allowed_cpus()
        data["target_kernels"] = target.facts.cpu.kernels  # what the target's reference CPU runs
    if args.json:
        _json(data)
        return 0
    where = "on this host's GPU" if data["device"] == "cuda" else f"on this host ({data['host']['cpu']})"
    if "native_isa" in data:
        where = where[:-1] + f", {data['native_isa']} kernels, {data['native_threads']} thread(s))"
    pacing = f"one call per {1000 / target.budgets.control_rate_hz:g} ms" if args.paced else "back to back"
    table = Table(title=f"{what} · {args.backend} · batch {args.batch} · {pacing} · {where}")
    for col in ("mean", "std", "p50", "p90", "p99", "max"):
        table.add_column(f"{col} ms", justify="right")
    table.add_row(*(f"{getattr(stats, f'{c}_ms'):.3f}" for c in ("mean", "std", "p50", "p90", "p99", "max")))
    out.print(table)
    out.print(f"deadline at {target.budgets.control_rate_hz:g} Hz ({target.name}, budget "
              f"{deadline.budget_ms:.1f} ms): {deadline.misses}/{stats.runs} missed"
              + ("" if args.paced else " (calls back to back; --paced times them as the loop calls them)"))
    if "latency_ticks" in data:
        ticks = data["latency_ticks"]
        out.print(f"commands missed per query at the policy's {action_rate:g} Hz: p50 {ticks['p50']}, "
                  f"p99 {ticks['p99']}, max {ticks['max']} (their closed-loop cost: edgevla eval BUNDLE "
                  "--latency-ticks N [--async])")
    if "latency_tolerance" in data:
        out.print(_tolerance_fit_line(data["latency_tolerance"]))
    if loop is not None:
        schedule = (f"temporal ensembling, m = {loop['ensemble_m']:g}" if loop["schedule"] == "ensemble" else
                    f"execute {loop['execute']}, lead {loop['lead']}: "
                    + ("async" if loop["lead"] else "sync, holding while the policy runs"))
        missed = loop["held"] - loop["held_at_start"]
        out.print(f"robot loop, {loop['ticks']} ticks at {loop['rate_hz']:g} Hz ({schedule}): {loop['chunks']} "
                  f"chunks; commands missed {missed} (+ {loop['held_at_start']} before the first chunk); chunk "
                  f"delay mean {loop['mean_delay_ticks']:.2f}, max {loop['max_delay_ticks']} ticks; command out "
                  f"{loop['command_ms']['p50']:.3f} ms (p50), {loop['command_ms']['p99']:.3f} (p99), "
                  f"{loop['command_ms']['max']:.3f} (max) after its tick began")
        if missed and loop["schedule"] != "ensemble":
            out.print(f"{missed} command(s) missed after the first chunk: queries ran later in the loop than alone; "
                      f"--lead {loop['lead'] + 1} starts them a tick earlier")
    if gpu_memory is not None:
        out.print(f"GPU memory: weights {gpu_memory['weights']:.1f} MiB, peak allocated "
                  f"{gpu_memory['peak_allocated']:.1f} MiB (warm-up and runs; budget "
                  f"{target.budgets.memory_budget_mb} MiB on {target.name})")
    if data.get("target_kernels") not in (None, data.get("native_isa")) and args.isa is None:
        out.print(_target_kernels_hint(target, data["native_isa"]))
    if plan is not None:
        _print_native_plan(plan)
    return 0


def _tolerance_fit(model: str, p99_ticks: int) -> dict[str, Any] | None:
    """Which schedules the bundle's build proved to tolerate a query of this p99, in control ticks (its report's
    latency tolerance; None for a policy reference or a build that did not measure it). ``fits`` is None where
    the p99 is past the latencies the build probed and success held over all of them."""
    path = Path(model) / "report.json"
    if not path.is_file():
        return None
    try:
        tolerance = json.loads(path.read_text()).get("extra", {}).get("latency_tolerance")
    except (OSError, ValueError, AttributeError) as e:
        raise EdgevlaError(f"cannot read the bundle's report {str(path)!r}: {e}") from None
    if not isinstance(tolerance, dict):
        return None

    def fits(k: int | None, at_least: bool) -> bool | None:
        return False if k is None else True if p99_ticks <= k else None if at_least else False

    return {"floor": tolerance["floor"], "max_ticks": tolerance["max_ticks"], "p99_ticks": p99_ticks,
            "schedules": {s: {"tolerated": c["built"]["tolerated"], "at_least": c["built"]["at_least"],
                              "fits": fits(c["built"]["tolerated"], c["built"]["at_least"])}
                          for s, c in tolerance["schedules"].items()}}


def _tolerance_fit_line(fit: Mapping[str, Any]) -> str:
    from .task.tolerance import tolerated_said

    groups = {verdict: [s for s, c in fit["schedules"].items() if c["fits"] is verdict]
              for verdict in (True, False, None)}
    said = {True: "holds for", False: "not proven for", None: f"not probed (past {fit['max_ticks']} ticks) for"}
    return (f"closed-loop success >= {fit['floor']:.1%} proven by the build up to: "
            + ", ".join(f"{s} {tolerated_said(c['tolerated'], c['at_least'])}" for s, c in fit["schedules"].items())
            + f" ticks of latency; at this p99 ({fit['p99_ticks']} tick(s)): "
            + "; ".join(f"{said[v]} {', '.join(names)}" for v, names in groups.items() if names))


def _check_loop_args(args: argparse.Namespace) -> None:
    if not args.loop:
        if args.ensemble is not None or args.lead is not None:
            raise EdgevlaError("--ensemble and --lead set the schedule of --loop: add --loop")
        return
    if args.loop_ticks < 1 or (args.lead is not None and args.lead < 0):
        raise EdgevlaError("--loop-ticks must be >= 1 and --lead >= 0")
    if args.ensemble is not None and args.lead is not None:
        raise EdgevlaError("--lead does not apply to --ensemble: it queries as soon as the last query is in")


def _check_loop_fits(args: argparse.Namespace, spec) -> None:
    if not spec.control_rate_hz:
        raise EdgevlaError("--loop runs the policy at its control rate, and its spec declares none")
    _check_execute(args.execute, spec.chunk_size)


def _robot_loop(args: argparse.Namespace, runner, obs, stats) -> dict[str, Any]:
    """The runner driven by a chunk controller in real time at the policy's control rate (profile --loop)."""
    from .control import ChunkController, TemporalEnsemble, ThreadedInference, latency_ticks, run_paced

    rate = runner.spec.control_rate_hz
    if args.ensemble is not None:
        with TemporalEnsemble(runner, m=args.ensemble, inference=ThreadedInference()) as controller:
            loop = run_paced(controller, lambda: obs, rate, args.loop_ticks)
        return {"schedule": "ensemble", "ensemble_m": args.ensemble, **loop.to_dict()}
    lead = latency_ticks(stats.p99_ms, rate) if args.lead is None else args.lead
    with ChunkController(runner, execute=args.execute, lead=lead, inference=ThreadedInference()) as controller:
        loop = run_paced(controller, lambda: obs, rate, args.loop_ticks)
    return {"schedule": "async" if lead else "sync", "execute": args.execute, "lead": lead, **loop.to_dict()}


def _target_kernels_hint(target, host_isa: str) -> str:
    """One line when the target's reference CPU runs other native kernels than this host: how to run them here."""
    from . import native

    kernels = target.facts.cpu.kernels
    said = f"{target.name}'s CPU runs the {kernels} kernels, this host the {host_isa} ones"
    if kernels in native.available_isas():
        return f"{said}: --isa {kernels} runs them here (on this host's cores, clocks and memory)"
    return f"{said} and cannot run those: the figures are this host's"


def _print_native_plan(plan) -> None:
    table = Table(title="native backend: kernel per linear layer")
    for col in ("layer", "K", "N", "weight", "sparsity", "pattern", "mode", "kernel", "epilogue"):
        table.add_column(col, justify="right" if col in ("K", "N", "sparsity") else "left")
    for c in plan:
        table.add_row(c.layer, str(c.k), str(c.n), c.weight, f"{c.sparsity:.2f}", c.pattern, c.mode, c.kernel,
                      c.epilogue)
    out.print(table)


@contextlib.contextmanager
def _thread_spin(args: argparse.Namespace):
    """``--spin-us`` for the length of the profile: the native CPU kernels' polling time, restored after."""
    spin = getattr(args, "spin_us", None)
    if spin is None:
        yield
        return
    if args.backend != "native":
        raise EdgevlaError(f"--spin-us sets the native CPU backend's threads; the backend is {args.backend!r}")
    if not 0 <= spin <= 1_000_000:
        raise EdgevlaError(f"--spin-us must be between 0 and 1000000, got {spin}")
    from . import native

    before = native.get_thread_spin_us()
    native.set_thread_spin_us(spin)
    try:
        yield
    finally:
        native.set_thread_spin_us(before)


@contextlib.contextmanager
def _native_isa(args: argparse.Namespace):
    """``--isa`` for the length of the profile: the native CPU kernels of one instruction set, restored after."""
    isa = getattr(args, "isa", None)
    if isa is not None and args.backend != "native":
        raise EdgevlaError(f"--isa picks the native CPU backend's kernels; the backend is {args.backend!r}")
    from . import native

    with native.isa_scope(isa):
        yield


def _profile_runner(args: argparse.Namespace, scratch: Path):
    """(runner, what is profiled, default target) for a bundle directory or a policy reference."""
    path = Path(args.model)
    if path.is_dir():
        from .bundle import load_bundle
        from .deploy import bundle_runner

        bundle = load_bundle(path)
        return (bundle_runner(bundle, args.backend, args.threads, args.device, args.kernel_tactics), str(path),
                bundle.manifest["target"]["name"])
    from .backends import CudaNativeRunner, make_runner, native_device
    from .deploy import no_tactics_here
    from .models.zoo import load_policy

    loaded = load_policy(args.model, allow_pickle=args.allow_pickle)
    if args.backend == "native" and native_device(args.device, gpu_target=False) == "cuda":
        return CudaNativeRunner(loaded.policy, tactics_path=args.kernel_tactics), loaded.name, "x86-64-cpu"
    no_tactics_here(args.kernel_tactics)
    if args.backend in ("onnxruntime", "native"):
        from .export import export_onnx

        onnx_path = export_onnx(loaded.policy, scratch / "model.onnx")
        runner = make_runner(args.backend, onnx_path=onnx_path, spec=loaded.policy.spec, threads=args.threads)
    else:
        runner = make_runner(args.backend, policy=loaded.policy, threads=args.threads)
    return runner, loaded.name, "x86-64-cpu"


# --------------------------------------------------------------------------- search and compare


def cmd_search(args: argparse.Namespace) -> int:
    from .progress import ConsoleProgress, Progress
    from .recipe import parse_assignments
    from .search import search
    from .targets import load_target

    tolerate = _tolerate_arg(args.tolerate)
    output = args.output or str(Path("bundles") / f"search-{load_target(args.target).name}")
    data = search(args.target, args.candidates, output, policy=args.policy, recipe=args.recipe,
                  overrides={**parse_assignments(args.set), **({} if args.env is None else {"evaluate.env": args.env})},
                  allow_pickle=args.allow_pickle, tolerate=tolerate,
                  progress=Progress() if args.json else ConsoleProgress())
    if args.json:
        _json(data)
    else:
        for record in data["candidates"]:
            if record["error"] is not None:
                out.print(f"candidate {record['candidate']}: not built ({record['error']})")
        if data["compare"] is not None:
            _print_comparison(data["compare"], None)
        out.print(f"search: {Path(output) / 'search.json'}")
    if data["pick"] is None:
        raise GateFailed("search: no candidate is within every budget of the target"
                         + ("" if tolerate is None else f" and proven at {tolerate[1]} tick(s) {tolerate[0]}"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_bundles

    if args.measure is None and (args.threads is not None or any(
            getattr(args, flag) != default for flag, default in (("runs", 50), ("warmup", 5), ("rounds", 3)))):
        raise EdgevlaError("--runs, --warmup, --rounds and --threads time the bundles here: add --measure BACKEND")
    data = compare_bundles(args.bundles, args.measure, runs=args.runs, warmup=args.warmup, rounds=args.rounds,
                           threads=args.threads, tolerate=_tolerate_arg(args.tolerate))
    if args.json:
        _json(data)
        return 0
    _print_comparison(data, args)
    return 0


def _print_comparison(data: Mapping[str, Any], args: argparse.Namespace | None) -> None:
    """compare's tables and pick line (and search's): ``args`` the compare command's, for --measure."""
    rows = data["bundles"]
    table = Table(title="bundles side by side: each report's figures, measured where it was built; latency "
                        "batch 1, the report's reference backend")
    for col in ("bundle", "compression", "nonzero params", "ONNX MB", "success (vs original, in its 95 % interval)",
                "p50 / p99 ms",
                "speed-up", "E(M)", "budgets", "latency tolerated, ticks"):
        table.add_column(col, justify="left" if col in ("bundle", "compression", "budgets") else "right")
    for r in rows:
        table.add_row(Path(r["bundle"]).name, r["compression"], f"{r['params_nonzero']:,}",
                      f"{r['onnx_bytes'] / 1e6:.2f}", _success_cell(r),
                      "n/a" if r["p50_ms"] is None else f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}",
                      "n/a" if r["speedup_p50"] is None else f"{r['speedup_p50']:.2f}x",
                      "n/a" if r["efficiency_E"] is None else f"{r['efficiency_E']:.3g}",
                      {True: "within", None: "unchecked"}.get(r["within_budgets"],
                                                              "over: " + ", ".join(r["failed_budgets"])),
                      _tolerated_cell(r["tolerated"]))
    out.print(table)
    if args is not None and args.measure is not None:
        measured = Table(title=f"measured here, one run: {args.measure}, batch 1, {args.rounds} rounds x "
                               f"{args.runs} calls")
        for col in ("bundle", "p50 ms", "p99 ms", "vs fastest", "E(M) here", "latency budget"):
            measured.add_column(col, justify="left" if col == "bundle" else "right")
        for r in rows:
            m = r["measured"]
            measured.add_row(Path(r["bundle"]).name, f"{m['p50_ms']:.3f}", f"{m['p99_ms']:.3f}",
                             f"{m['vs_fastest']:.2f}x",
                             "n/a" if m["efficiency_E"] is None else f"{m['efficiency_E']:.3g}",
                             {True: "within", False: "over", None: "unchecked"}[m["within_latency_budget"]])
        out.print(measured)
    for said in data["differences"]:
        out.print(f"note: {said}: their report figures are not like for like")
    tolerate = data["tolerate"]
    proven = "" if tolerate is None else f", proven at {tolerate['ticks']} tick(s) {tolerate['schedule']}"
    proven += ", latency measured here" if data["latency_weighed"] == "measured here" else ""
    out.print(f"pick: {data['pick']} (the highest E(M) within every budget of its target{proven})" if data["pick"]
              else f"pick: none (no bundle is within every budget of its target with a closed-loop success "
                   f"rate{proven})")


def _tolerate_arg(text: str | None) -> tuple[str, int] | None:
    from .task.tolerance import SCHEDULES

    if text is None:
        return None
    schedule, _, ticks = text.partition(":")
    if schedule not in SCHEDULES or not ticks.isdigit():
        raise EdgevlaError(f"--tolerate: expected SCHEDULE:TICKS with a schedule of {', '.join(SCHEDULES[:-1])} or "
                           f"{SCHEDULES[-1]}, like async:2, got {text!r}")
    return schedule, int(ticks)


def _success_cell(row: Mapping[str, Any]) -> str:
    if row["success_rate"] is None:
        return "n/a"
    original, loss = row["original_success_rate"], row.get("loss_ci95")
    if original is None:
        return f"{row['success_rate']:.1%}"
    sure = "" if loss is None else f" in [{-100 * loss[1]:+.1f}, {-100 * loss[0]:+.1f}]"
    return f"{row['success_rate']:.1%} ({100 * (row['success_rate'] - original):+.1f} pt{sure})"


def _tolerated_cell(tolerated: Mapping[str, Any] | None) -> str:
    from .task.tolerance import tolerated_said

    if tolerated is None:
        return "not measured"
    return ", ".join(f"{s} {tolerated_said(t['tolerated'], t['at_least'])}" for s, t in tolerated.items())


# --------------------------------------------------------------------------- inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    from .bundle import inspect_bundle

    ins = inspect_bundle(args.bundle)
    m = ins.manifest or {}
    data = {
        "bundle": str(Path(args.bundle)), "ok": ins.ok, "problems": list(ins.problems),
        "policy": m.get("policy", {}).get("name"), "target": m.get("target", {}).get("name"),
        "created": m.get("created"), "versions": m.get("versions"), "inputs": m.get("inputs"),
        "outputs": m.get("outputs"), "chunk_size": m.get("chunk_size"), "control_rate_hz": m.get("control_rate_hz"),
        "files": [{"path": f.path, "bytes": f.bytes, "sha256_ok": f.sha256_ok} for f in ins.files],
    }
    if args.json:
        _json(data)
    else:
        out.print(f"[bold]{data['bundle']}[/bold]: policy {data['policy']} for {data['target']}, "
                  f"built {data['created']}")
        for io in ("inputs", "outputs"):
            for t in data[io] or []:
                out.print(f"  {io[:-1]:6} {t['name']:12} {t['dtype']:8} {t['shape']}")
        table = Table()
        table.add_column("file")
        table.add_column("bytes", justify="right")
        table.add_column("sha256")
        for f in data["files"]:
            table.add_row(f["path"], f"{f['bytes']:,}", "[green]ok[/green]" if f["sha256_ok"] else "[red]MISMATCH[/red]")
        out.print(table)
        for p in data["problems"]:
            out.print(f"[red]problem:[/red] {p}")
    if not ins.ok:
        raise EdgevlaError(f"bundle {args.bundle} failed verification: {'; '.join(ins.problems)}")
    return 0


# --------------------------------------------------------------------------- targets


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import list_targets

    targets = list_targets()
    if args.json:
        _json([t.to_dict() for t in targets])
        return 0
    table = Table()
    for col in ("name", "aliases", "kind", "cc", "precisions", "2:4", "GB/s", "CPU kernels", "Hz", "budget ms"):
        table.add_column(col)
    for t in targets:
        f = t.facts
        table.add_row(t.name, ", ".join(t.aliases), t.kind, f.compute_capability or "-", " ".join(f.precisions),
                      "yes" if f.sparse_tensor_cores else "no", f"{f.memory_bandwidth_gbps:g}", f.cpu.kernels or "-",
                      f"{t.budgets.control_rate_hz:g}", f"{t.budgets.latency_budget_ms:g}")
    out.print(table)
    return 0


# --------------------------------------------------------------------------- zoo


def cmd_zoo(args: argparse.Namespace) -> int:
    if args.zoo_command == "list":
        return _zoo_list(args)
    if args.zoo_command == "train":
        return _zoo_train(args)
    raise EdgevlaError("usage: edgevla zoo {list,train}")


def _zoo_list(args: argparse.Namespace) -> int:
    from .models.vla import CONFIGS, VLAPolicy
    from .models.zoo import RANDOM_INIT, zoo_checkpoint

    import torch

    rows = []
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in VLAPolicy(cfg).parameters())
        path = zoo_checkpoint(name)
        rows.append({"name": name, "parameters": n,
                     "weights": "random init" if name in RANDOM_INIT else str(path),
                     "available": name in RANDOM_INIT or path.is_file()})
    if args.json:
        _json(rows)
    else:
        for r in rows:
            out.print(f"{r['name']:10} {r['parameters'] / 1e6:7.2f}M  {'ready ' if r['available'] else 'untrained'}  {r['weights']}")
    return 0


def _zoo_train(args: argparse.Namespace) -> int:
    from .models.checkpoint import save_checkpoint
    from .models.vla import CONFIGS
    from .models.zoo import RANDOM_INIT, cache_dir
    from .metrics.report import host_info
    from .progress import ConsoleProgress
    from .task import evaluate
    from .train import TRAIN_RECIPES, resolve_precision, task_config_for, torch_action_fn, train_policy

    if args.name not in TRAIN_RECIPES:
        trainable = ", ".join(TRAIN_RECIPES)
        why = " (it is random init by design)" if args.name in RANDOM_INIT else ""
        raise EdgevlaError(f"cannot train {args.name!r}{why}; trainable: {trainable}")
    tc = TRAIN_RECIPES[args.name]
    if args.steps is not None:
        if args.steps < 1:
            raise EdgevlaError("--steps must be >= 1")
        tc = type(tc)(**{**tc.__dict__, "steps": args.steps})
    if args.blank and not args.output:
        raise EdgevlaError("--blank trains an ablation: give --output so it does not replace the zoo checkpoint")
    if args.threads is not None and args.threads < 1:
        raise EdgevlaError("--threads must be >= 1")
    tc = type(tc)(**{**tc.__dict__, "seed": args.seed, "blank": args.blank, "threads": args.threads})
    dest = Path(args.output) if args.output else cache_dir() / "zoo" / f"{args.name}.safetensors"
    if dest.exists() and dest.is_dir():
        raise EdgevlaError(f"output {dest} is a directory; give a file path")
    progress = ConsoleProgress()
    with progress.stage("train", f"{args.name}: {tc.steps} steps of batch {tc.batch_size} "
                                 f"({resolve_precision(tc.precision)})"):
        with progress.task("steps", tc.steps) as advance:
            def on_step(step: int, loss: float) -> None:
                advance(1)
                if (step + 1) % 250 == 0:
                    progress.note(f"step {step + 1}/{tc.steps}: loss {loss:.4f}")

            policy, log = train_policy(CONFIGS[args.name], tc, name=args.name, on_step=on_step)
    with progress.stage("evaluate", f"{args.episodes} closed-loop episodes"):
        result = evaluate(torch_action_fn(policy), task_config_for(policy.config), episodes=args.episodes,
                          blank=args.blank)
    save_checkpoint(policy, dest, extra={"train_steps": str(log.steps), "train_seconds": f"{log.seconds:.1f}",
                                         "success_rate": f"{result.success_rate:.4f}"})
    data = {"policy": args.name, "blank": args.blank, "checkpoint": str(dest), "steps": log.steps, "seconds": round(log.seconds, 1),
            "samples_per_s": round(log.samples_per_s, 1), "precision": log.precision, "final_loss": log.losses[-1] if log.losses else None,
            "success_rate": result.success_rate, "episodes": result.episodes}
    card = dest.with_suffix(".json")  # the model card: how it was trained and how well it does
    card.write_text(json.dumps({**data, "command": "edgevla zoo train " + " ".join(_train_argv(args)),
                                "train_config": tc.__dict__, "host": host_info()}, indent=2) + "\n")
    if args.json:
        _json(data)
    else:
        out.print(f"{args.name}: {log.steps} steps in {log.seconds / 60:.1f} min "
                  f"({log.samples_per_s:.0f} samples/s); closed-loop success {result.success_rate:.1%} "
                  f"over {result.episodes} episodes; saved {dest}")
    return 0


def _train_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.name]
    for flag in ("steps", "seed", "blank", "threads", "episodes"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag}", str(value)]
    return argv


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    if args.bench_command is None:
        raise EdgevlaError("bench: name a benchmark (edgevla bench --help lists them)")
    module = importlib.import_module(f".bench.{args.bench_command}", __package__)
    return module.run(args)
