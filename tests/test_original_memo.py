"""The original policy's results kept for the next build of it (a search's candidates)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from edgevla.original_memo import OriginalMemo, fingerprint
from edgevla.pipeline import BuildRequest, build
from user_policies import SmallPolicy

ENV = "user_envs:make_reach_env"


def test_the_fingerprint_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    policy = SmallPolicy()
    policy.register_buffer("step", torch.tensor(3))  # a 0-dim tensor
    policy.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))  # a dtype NumPy has not
    twin = copy.deepcopy(policy)
    assert fingerprint(twin) == fingerprint(policy)
    with torch.no_grad():
        twin.fc1.weight[3, 5] += 1e-6
    assert fingerprint(twin) != fingerprint(policy)
    twin = copy.deepcopy(policy)
    twin.scale[0] = 2.0
    assert fingerprint(twin) != fingerprint(policy)


def test_a_value_is_made_once_and_a_file_copied_after(tmp_path):
    calls = []
    with OriginalMemo() as memo:
        assert memo.value("k", lambda: calls.append(1) or 41) == (41, False)
        assert memo.value("k", lambda: calls.append(1) or 42) == (41, True) and calls == [1]

        def write(path: Path) -> Path:
            calls.append(path.name)
            path.write_bytes(b"onnx bytes")
            return path

        first, reused = memo.file("f", tmp_path / "a.onnx", write)
        assert not reused and first.read_bytes() == b"onnx bytes"
        first.write_bytes(b"changed by its build")  # a build may rewrite its copy (strip metadata, say)
        second, reused = memo.file("f", tmp_path / "b.onnx", write)
        assert reused and second.read_bytes() == b"onnx bytes" and calls == [1, "a.onnx"]
        kept = memo._dir
        assert kept.is_dir()
    assert not kept.exists()


def test_builds_sharing_a_memo_measure_the_original_once(tests_on_path, fast, tmp_path):
    settings = {**fast, "evaluate.env": ENV, "evaluate.tolerance.max_ticks": 1}

    def run(name, memo, **more):
        return build(BuildRequest(target="x86-64-cpu", policy="user_envs:make_reach_policy", memo=memo,
                                  output=str(tmp_path / name), overrides={**settings, **more}))

    with OriginalMemo() as memo:
        first = run("w8a8", memo, **{"quantize.format": "w8a8"})
        second = run("2to4", memo, **{"prune.method": "nm", "prune.pattern": "2:4"})
        third = run("structured", memo, **{"prune.method": "structured", "prune.amount": 0.5})
        other = run("fewer", memo, **{"evaluate.episodes": 20})
    assert first.report["extra"]["original_reused"] == "none"
    assert second.report["extra"]["original_reused"] == ["onnx", "evaluate", "latency_tolerance"]
    # the original's success on the recovery's episodes and on its confirmation episodes, then the rest
    assert third.report["extra"]["original_reused"] == ["recovery_success", "recovery_success", "onnx", "evaluate",
                                                        "latency_tolerance"]
    recoveries = [r.report["extra"]["prune"]["recovery"] for r in (second, third)]
    assert len({(r["teacher_success"], r["teacher_confirm_success"]) for r in recoveries}) == 1
    assert other.report["extra"]["original_reused"] == ["onnx"]  # other episodes: measured again
    alone = run("alone", None, **{"prune.method": "nm", "prune.pattern": "2:4"})
    assert alone.report["extra"]["original_reused"] == "none"
    for key in ("evaluate", "latency_tolerance"):  # what was kept is what a build of its own measures
        kept, own = (r.report["extra"][key] for r in (second, alone))
        if key == "evaluate":
            kept, own = kept["original/torch"], own["original/torch"]
        else:
            kept, own = ({s: c["original"] for s, c in x["schedules"].items()} for x in (kept, own))
        assert kept == own
