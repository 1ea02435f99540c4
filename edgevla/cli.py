"""The ``edgevla`` command line: a thin layer over the Python API.

Every user error ends as one line on stderr and a non-zero exit (2 for bad
input, 3 for a failed gate); a traceback is shown only with ``EDGEVLA_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import EdgevlaError

BACKEND_CHOICES = ("torch", "onnxruntime", "native", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = ("where --backend native runs: auto (default: the GPU for a GPU target's bundle when edgevla's CUDA "
               "kernels can run here, else the CPU), cpu, or cuda")
ISA_HELP = ("native CPU kernels: run this instruction set's (avx2, avx_vnni, avx512_vnni, avx512_amx, neon_dot, "
            "generic: those of this build this CPU runs), as a CPU without the better ones would; default: the best "
            "this CPU has. Only edgevla's kernels change: PyTorch, ONNX Runtime and NumPy keep theirs")
TACTICS_HELP = ("native backend on a GPU: time each kernel variant per layer shape on this GPU and run the fastest; "
                "FILE (JSON) keeps the choices: read when it exists (it must be from this GPU model), written back "
                "with what was newly timed")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EdgevlaError(f"{self.prog}: {message}")


ENV_HELP = ("the closed-loop task: a callable returning your simulator's environment, with Gymnasium's API "
            "(reset, step; info['is_success'])")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgevla", description="Compress, export and prove VLA robot policies for the robot's hardware.")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    b = sub.add_parser("build", help="policy -> verified, profiled bundle for a target")
    b.add_argument("--target", "-t", required=True, help="target name or alias (see `edgevla targets`) or a YAML path")
    b.add_argument("--policy", "-p", help="zoo name, module:factory, or checkpoint (default: the recipe's, else tiny-vla)")
    b.add_argument("--recipe", "-r", help="recipe YAML overriding the target's default recipe")
    b.add_argument("--output", "-o", help="bundle directory (default: bundles/<policy>-<target>)")
    b.add_argument("--episodes", type=int, help="closed-loop episodes per model (overrides the recipe)")
    b.add_argument("--env", metavar="MODULE:FACTORY", help=ENV_HELP + " (recipe evaluate.env)")
    b.add_argument("--prune", metavar="METHOD",
                   help="none, 2:4, 4:8, unstructured:S (weights zeroed) or structured:A[:neurons|heads|width|blocks] "
                        "(parameters of prune.scope removed: trunk unless --set says otherwise); overrides the recipe's "
                        "and the target's prune method")
    b.add_argument("--quantize", metavar="FORMAT",
                   help="none, w8a8, w8a16, w4a16, fp16 or fp8 (where the target runs it); overrides the "
                        "recipe's and the target's quantize.format")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe value, over the recipe file's and the target's (repeatable; the value is YAML): "
                        "prune.scope=null, quantize.smoothquant.enabled=true, profile.runs=50")
    b.add_argument("--allow-pickle", action="store_true", help="accept a pickle checkpoint (runs code from the file)")
    b.add_argument("--json", action="store_true", help="print the build summary as JSON")

    e = sub.add_parser("eval", help="closed-loop success of a bundle's model")
    e.add_argument("bundle")
    e.add_argument("--backend", "-b", default="onnxruntime", choices=BACKEND_CHOICES)
    e.add_argument("--episodes", "-n", type=int, default=200)
    e.add_argument("--seed", type=int, default=10_000)
    e.add_argument("--env", metavar="MODULE:FACTORY", help=ENV_HELP + " (default: the bundle's recipe's evaluate.env, "
                                                                      "else the tabletop task)")
    e.add_argument("--env-workers", type=int, metavar="N",
                   help="processes to step the simulator's episodes in (default: the bundle's recipe's "
                        "evaluate.env_workers; 0: this one)")
    e.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    e.add_argument("--kernel-tactics", metavar="FILE", help=TACTICS_HELP)
    latency = e.add_mutually_exclusive_group()
    latency.add_argument("--latency-ms", type=float, nargs="+", metavar="MS",
                         help="each query takes this long: the commands of the policy's control ticks that "
                              "pass before its chunk is in are missed (none within one period); one "
                              "evaluation per value")
    latency.add_argument("--latency-ticks", type=int, nargs="+", metavar="N",
                         help="the same as the number of missed control ticks")
    latency.add_argument("--latency-from", metavar="PROFILE_JSON",
                         help="each query's latency drawn from the samples `edgevla profile ... --json` measured "
                              "(on the robot's computer): their jitter too; --async leads by their p99")
    latency.add_argument("--realtime", action="store_true",
                         help="no latency model: each episode alone (batch 1) in real time at the policy's control "
                              "rate, the policy in a worker thread at its own speed on this computer")
    e.add_argument("--lead", type=int, metavar="N",
                   help="--realtime: start the next query N ticks before the chunk is spent (default 0: hold while "
                        "the policy runs)")
    e.add_argument("--threads", type=int, metavar="N", help="CPU threads of the backend (default: one per core)")
    schedule = e.add_mutually_exclusive_group()
    schedule.add_argument("--async", dest="asynchronous", action="store_true",
                          help="with a latency: query that many ticks before the chunk is spent and keep executing "
                               "it (default: hold while the policy runs)")
    schedule.add_argument("--ensemble", type=float, metavar="M",
                          help="ACT's temporal ensembling instead of executing chunks in turn: a query as soon as "
                               "the last is in, each tick the mean of every chunk's prediction weighted "
                               "exp(-M i), oldest first (ACT: 0.01)")
    e.add_argument("--execute", type=int, metavar="N", help="actions of each chunk executed (4)")
    e.add_argument("--json", action="store_true")

    pr = sub.add_parser("profile", help="latency, jitter and deadline misses of a bundle or a policy")
    pr.add_argument("model", help="bundle directory or policy reference")
    pr.add_argument("--backend", "-b", default="onnxruntime", choices=BACKEND_CHOICES)
    pr.add_argument("--target", "-t", help="target whose control rate sets the deadline (default: the bundle's)")
    pr.add_argument("--runs", type=int, default=200)
    pr.add_argument("--warmup", type=int, default=20)
    pr.add_argument("--paced", action="store_true",
                    help="one call per control period of the target, idle in between, as the robot's loop calls "
                         "the policy (caches and threads cold, as there), not back to back")
    pr.add_argument("--batch", type=int, default=1)
    pr.add_argument("--threads", type=int)
    pr.add_argument("--spin-us", type=int, metavar="US",
                    help="native CPU backend: how long its kernel threads poll for work before they sleep "
                         "(default 200; 0 = sleep at once, for cores shared with other processes)")
    pr.add_argument("--isa", metavar="NAME", help=ISA_HELP)
    pr.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    pr.add_argument("--kernel-tactics", metavar="FILE", help=TACTICS_HELP)
    pr.add_argument("--loop", action="store_true",
                    help="then run the policy as the robot's loop does, in real time at its control rate: one "
                         "action per tick from a chunk controller, queries on a worker thread; counts the "
                         "commands missed")
    pr.add_argument("--execute", type=int, default=4, metavar="N", help="--loop: actions of each chunk executed (4)")
    pr.add_argument("--lead", type=int, metavar="N",
                    help="--loop: start the next query N ticks before the chunk is spent (default: the commands "
                         "a query of the measured p99 latency misses; 0 = hold while the policy runs)")
    pr.add_argument("--ensemble", type=float, metavar="M",
                    help="--loop: temporal ensembling (weight M, ACT: 0.01) instead of executing chunks in turn")
    pr.add_argument("--loop-ticks", type=int, default=300, metavar="N", help="--loop: control ticks to run (300)")
    pr.add_argument("--allow-pickle", action="store_true")
    pr.add_argument("--json", action="store_true")

    se = sub.add_parser("search", help="build a policy several ways for a target, compare, pick the one to ship")
    se.add_argument("--target", "-t", required=True, help="target name or alias (see `edgevla targets`) or a YAML path")
    se.add_argument("--try", dest="candidates", action="append", required=True, metavar="CANDIDATE",
                    help="a compression to build (repeatable): a --prune shorthand, a --quantize format, or both "
                         "joined by +, e.g. 2:4, w8a8, 2:4+w8a8, structured:0.3:blocks+w8a8")
    se.add_argument("--policy", "-p", help="zoo name, module:factory, or checkpoint (default: the recipe's, else "
                                           "tiny-vla)")
    se.add_argument("--recipe", "-r", help="recipe YAML for every candidate")
    se.add_argument("--env", metavar="MODULE:FACTORY", help=ENV_HELP + " (recipe evaluate.env)")
    se.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe value for every candidate (repeatable), e.g. evaluate.tolerance.max_ticks=3")
    se.add_argument("--tolerate", metavar="SCHEDULE:TICKS",
                    help="pick only a candidate whose build proved success at this latency in this schedule "
                         "(sets evaluate.tolerance.max_ticks to at least TICKS for every candidate)")
    se.add_argument("--output", "-o", help="directory of the candidates' bundles and search.json "
                                           "(default: bundles/search-<target>)")
    se.add_argument("--allow-pickle", action="store_true", help="accept a pickle checkpoint (runs code from the file)")
    se.add_argument("--json", action="store_true")

    c = sub.add_parser("compare", help="bundles side by side (success, latency, E(M), budgets, latency "
                                       "tolerated), and the one to ship")
    c.add_argument("bundles", nargs="+", metavar="BUNDLE")
    c.add_argument("--measure", choices=("torch", "onnxruntime", "native", "tensorrt"), metavar="BACKEND",
                   help="also time every bundle here (on the robot's computer), in one run with this backend "
                        "(torch, onnxruntime, native, tensorrt): rounds timing each in turn, medians; the pick then "
                        "weighs that latency (E(M) with its p50, the latency budget on its p99)")
    c.add_argument("--tolerate", metavar="SCHEDULE:TICKS",
                   help="pick only among bundles whose build proved success at this latency in this schedule "
                        "(sync, async or ensemble; evaluate.tolerance.max_ticks), e.g. async:2")
    c.add_argument("--runs", type=int, default=50, help="--measure: calls per bundle and round (50)")
    c.add_argument("--warmup", type=int, default=5, help="--measure: calls first, untimed (5)")
    c.add_argument("--rounds", type=int, default=3, help="--measure: rounds (3)")
    c.add_argument("--threads", type=int, help="--measure: CPU threads (default: all cores)")
    c.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="what is inside a bundle, and whether every hash matches")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true")

    t = sub.add_parser("targets", help="list the known hardware targets")
    t.add_argument("--json", action="store_true")

    z = sub.add_parser("zoo", help="the reference policies")
    zsub = z.add_subparsers(dest="zoo_command", parser_class=_Parser)
    zl = zsub.add_parser("list", help="zoo policies and where their weights are")
    zl.add_argument("--json", action="store_true")
    zt = zsub.add_parser("train", help="train a zoo policy on the tabletop task")
    zt.add_argument("name", help="tiny-vla or small-vla")
    zt.add_argument("--steps", type=int, help="optimizer steps (default: the policy's recipe)")
    zt.add_argument("--output", "-o", help="checkpoint path (default: the zoo cache)")
    zt.add_argument("--episodes", type=int, default=200, help="closed-loop episodes to evaluate the result")
    zt.add_argument("--seed", type=int, default=0)
    zt.add_argument("--blank", choices=("image", "instruction"),
                    help="ablation: train and evaluate with this input zeroed (needs --output)")
    zt.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    zt.add_argument("--json", action="store_true")

    bn = sub.add_parser("bench", help="benchmarks that print a table and write JSON (kernels, quant, prune)")
    bsub = bn.add_subparsers(dest="bench_command", parser_class=_Parser)
    # Each benchmark is a module edgevla/bench/<name>.py with run(args) -> int;
    # its arguments are declared here so `edgevla --help` stays import-light.
    bq = bsub.add_parser("quant", help="every quantization format on one policy: success, size, latency, "
                                       "SQNR, against ONNX Runtime's quantize_static and PyTorch dynamic int8")
    bq.add_argument("--policy", "-p", default="tiny-vla", help="zoo name, module:factory or checkpoint")
    bq.add_argument("--episodes", "-n", type=int, default=200, help="closed-loop episodes per model")
    bq.add_argument("--env", metavar="MODULE:FACTORY", help=ENV_HELP)
    bq.add_argument("--formats", help="comma-separated subset of w8a8,w8a16,w4a16,fp16,fp8 (default: all)")
    bq.add_argument("--calibration", choices=("minmax", "percentile", "entropy", "mse"), default="minmax",
                    help="activation calibrator for w8a8 and fp8 (default: minmax, as quantize_static's)")
    bq.add_argument("--float-dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                    help="storage of tensors left in floating point (default: fp16)")
    bq.add_argument("--int4-rounding", choices=("gptq", "nearest"), default="gptq",
                    help="how w4a16 rounds its weights (default: gptq, as edgevla build does)")
    bq.add_argument("--int4-scaling", choices=("awq", "none"), default="awq",
                    help="whether w4a16 scales int4 input channels by AWQ first (default: awq, as edgevla build does)")
    bq.add_argument("--runs", type=int, default=200, help="timed ONNX Runtime runs per model (batch 1)")
    bq.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch threads (default: 1)")
    bq.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    bq.add_argument("--allow-pickle", action="store_true")
    # <bench parsers>
    bk = bsub.add_parser("kernels", help="native CPU kernels (int8, sparse, 2:4, int4) on the reference policies' "
                                         "linear shapes, beside PyTorch and ONNX Runtime")
    bk.add_argument("--json", metavar="FILE", help="also write the rows and goals as JSON to FILE")
    bk.add_argument("--quick", action="store_true", help="tiny-vla and base-vla shapes at M = 1, 16, short timing")
    bk.add_argument("--configs", help="comma-separated subset of tiny-vla,small-vla,base-vla (default: all)")
    bk.add_argument("--ms", help="comma-separated row counts M (default: 1,16,64,256)")
    bk.add_argument("--threads", type=int, help="threads of every backend (default: one per physical core this "
                                                 "process may use)")
    bk.add_argument("--min-time", type=float, help="seconds of timed calls per row (default 0.15, --quick 0.02)")
    bk.add_argument("--isa", metavar="NAME", help=ISA_HELP)
    bk.add_argument("--no-convs", action="store_true",
                    help="leave out the ResNet-18 convolution GEMMs (conv-int8 rows)")
    bk.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: the native CPU kernels (default); cuda: the CUDA kernels beside cuBLAS, cuSPARSELt "
                         "and fp16 matmul (M = 1,16,256,1024 by default; edgevla/bench/kernels_cuda.py)")
    be = bsub.add_parser("e2e", help="compressed bundles end to end on the native backend and ONNX Runtime, beside "
                                     "the dense policy under ONNX Runtime dynamic int8 and PyTorch fp32")
    be.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories (compressed builds)")
    be.add_argument("--policy", "-p", help="the dense reference policy (default: the bundles' own)")
    be.add_argument("--rounds", type=int, default=5, help="rounds over every backend in turn (default 5)")
    be.add_argument("--runs", type=int, default=50, help="timed calls per backend and round (default 50)")
    be.add_argument("--warmup", type=int, default=10, help="untimed calls before each (default 10)")
    be.add_argument("--threads", type=int, default=1, help="threads of every backend (default 1)")
    be.add_argument("--batch", type=int, default=1, help="observations per call (default 1)")
    be.add_argument("--isa", metavar="NAME", help=ISA_HELP)
    be.add_argument("--allow-pickle", action="store_true")
    be.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    bp = bsub.add_parser("prune", help="each pruning method on one policy: size, FLOPs, success, recovery, latency")
    bp.add_argument("--policy", "-p", default="tiny-vla", help="zoo name, module:factory or checkpoint")
    bp.add_argument("--methods", default="2:4,unstructured:0.8,structured:0.5,structured:0.5:blocks",
                    help="comma-separated --prune shorthands "
                         "(default: 2:4,unstructured:0.8,structured:0.5,structured:0.5:blocks)")
    bp.add_argument("--target", "-t", default="x86-64-cpu",
                    help="target whose recipe defaults and channel multiple apply (default: x86-64-cpu)")
    bp.add_argument("--episodes", type=int, default=200, help="closed-loop episodes per success figure")
    bp.add_argument("--env", metavar="MODULE:FACTORY", help=ENV_HELP)
    bp.add_argument("--recovery-steps", type=int, help="distillation budget (default: the recipe's)")
    bp.add_argument("--runs", type=int, default=200, help="timed runs per latency figure")
    bp.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    bp.add_argument("--allow-pickle", action="store_true")
    bp.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return p


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except EdgevlaError as e:
        print(f"edgevla: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgevla: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        if os.environ.get("EDGEVLA_DEBUG"):
            raise
        print(f"edgevla: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(set EDGEVLA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from . import versions

        _print_json(versions())
        return 0
    if args.command is None:
        _parser().print_help()
        return 2
    from . import commands  # heavy imports (torch, onnx) only when a command runs

    handler = getattr(commands, f"cmd_{args.command}")
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
