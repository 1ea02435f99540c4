"""Shared fixtures: one quick build of the default policy, used by several test modules; and the parallel
run that plain ``pytest`` makes where pytest-xdist is installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edgevla.original_memo import OriginalMemo
from edgevla.pipeline import BuildRequest, build

#: Each worker imports torch and builds its own module fixtures: past a few workers a run gains little time and
#: costs hundreds of MB apiece.
MAX_TEST_WORKERS = 4


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the options set here
def pytest_cmdline_main(config) -> None:
    """Plain ``pytest`` runs in parallel where pytest-xdist is installed (the test extra): one worker per CPU this
    process may run on, at most MAX_TEST_WORKERS, each module on one worker (its fixtures made once). ``-n N``
    (``-n 0``: in this process) on the command line wins; without pytest-xdist, or in a worker, nothing changes."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return
    if config.option.numprocesses is None:
        config.option.numprocesses = max(1, min(len(os.sched_getaffinity(0)), MAX_TEST_WORKERS))
        if config.option.dist == "no":
            config.option.dist = "loadfile"
            config.option.loadscopereorder = False  # hand modules out in LONGEST_FIRST order, not by test count


#: The modules that take longest (``pytest --durations=0``, 2 workers, 2026-12-07), handed out to the workers
#: first so that the many short ones fill the end of the run. pytest-xdist would otherwise order modules by how
#: many tests they hold, which puts these few-test, long modules last, one worker running them while the other
#: idles. (Starting the two CUDA-emulation modules apart rather than side by side made a CI run 28 s slower.)
LONGEST_FIRST = ("test_cuda_emulated_race.py", "test_cuda_emulated.py", "test_pipeline_prune.py",
                 "test_bench_prune.py", "test_cmake_cuda_archs.py", "test_search.py", "test_pipeline.py",
                 "test_train.py", "test_task_user_env.py", "test_task_mujoco.py", "test_cli.py",
                 "test_pipeline_recovery.py", "test_runtime_bundle.py", "test_kernels_int8.py",
                 "test_prune_recovery.py", "test_original_memo.py", "test_quant_restore.py", "test_export_tensorrt.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module stays in one piece


# A quick recipe: every stage runs, with fewer episodes and timing runs.
FAST = {"evaluate.episodes": 60, "verify.samples": 32, "profile.runs": 8, "profile.warmup": 2,
        "profile.batch_sizes": [1, 2]}


@pytest.fixture(scope="session")
def fast() -> dict:
    return dict(FAST)


@pytest.fixture(scope="session")
def original_memo():
    """The original policy's ONNX export and closed-loop runs, shared by the builds of a test worker as by a
    search's (edgevla.original_memo: keyed by the original's weights and every setting they depend on). Exporting
    the default policy alone takes ~13 s a build; test_original_memo tests the memo itself."""
    with OriginalMemo() as memo:
        yield memo


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, original_memo):
    out = tmp_path_factory.mktemp("bundles") / "tiny-orin"
    return build(BuildRequest(target="jetson-orin", output=str(out), overrides=FAST, memo=original_memo))


@pytest.fixture
def tests_on_path(monkeypatch):
    """The tests' helper modules (user policies and simulators, named by ``module:factory``) importable here and
    in the processes a build starts (the memory probe, environment workers)."""
    tests = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests)
    monkeypatch.setenv("PYTHONPATH", tests)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Small models on a shared 2-core machine: two spinning OpenMP threads run them
    ~50x slower than one when another process wants a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def split_small_gemms():
    """Every native GEMM is split over the threads, however small, so the threaded tiling is what is tested."""
    from edgevla import native

    if not native.available():
        yield
        return
    native.set_min_macs_per_thread(1)
    yield
    native.set_min_macs_per_thread(native.DEFAULT_MIN_MACS_PER_THREAD)


@pytest.fixture
def restore_dispatch():
    """Tests may force an ISA or a thread count; both come back afterwards."""
    from edgevla import native

    threads = native.get_num_threads()
    yield
    native.set_isa("auto")
    native.set_num_threads(threads)
