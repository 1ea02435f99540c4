from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pathlib
import stat

import numpy as np
import pytest
import torch
from torch import nn

from edgevla.bundle import (
    MANIFEST_SCHEMA_VERSION,
    inspect_bundle,
    load_bundle,
    load_weights,
    make_manifest,
    save_weights,
    spec_from_manifest,
    weights_bytes,
    write_bundle,
)
from edgevla.errors import EdgevlaError
from edgevla.spec import PolicySpec, TensorSpec


class Config:
    def __init__(self, width: int):
        self.width = width

    def to_dict(self):
        return {"width": self.width, "kind": "tiny"}


class TiedPolicy(nn.Module):
    """A token model whose output head shares the embedding matrix."""

    def __init__(self):
        super().__init__()
        self.config = Config(width=8)
        self.spec = PolicySpec(
            observations=(TensorSpec("image", (3, 4, 4), "float32", 0.0, 1.0),
                          TensorSpec("instruction", (6,), "int64", 0, 15)),
            action=TensorSpec("action", (8, 2)), action_mean=(0.1, -0.2), action_std=(1.5, 0.5),
            control_rate_hz=20.0, extra={"camera": "wrist"})
        self.embed = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.LayerNorm(8)


@pytest.fixture()
def policy():
    torch.manual_seed(2)
    return TiedPolicy()


@pytest.fixture()
def manifest(policy):
    return make_manifest(policy.spec, policy_name="tiny", policy_reference="tests.test_bundle:TiedPolicy",
                         policy_config=policy.config, target={"name": "jetson-orin-nano", "memory_gb": 8},
                         layers=[{"name": "head", "precision": "int8", "sparsity": 0.5, "pattern": "2:4"}],
                         recipe={"quantize": "int8"})


@pytest.fixture()
def contents(policy, tmp_path):
    rng = np.random.default_rng(0)
    onnx_source = tmp_path / "exported.onnx"
    onnx_source.write_bytes(rng.bytes(3000))
    return {
        "model.onnx": onnx_source,
        "weights.safetensors": weights_bytes(policy),
        "report.json": json.dumps({"latency_ms": 1.5}).encode(),
        "report.md": b"# Report\n",
        "plots/latency.png": rng.bytes(500),
    }


def _bytes_of(source):
    return source.read_bytes() if isinstance(source, pathlib.Path) else source


def _leftovers(parent: pathlib.Path, keep: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != keep)


def test_manifest_describes_the_policy(policy, manifest):
    assert manifest["format"] == "edgevla-bundle" and manifest["schema_version"] == MANIFEST_SCHEMA_VERSION == 1
    created = dt.datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(minutes=5)
    assert manifest["versions"]["torch"] == torch.__version__
    assert set(manifest["versions"]) == {"edgevla", "torch", "onnx", "onnxruntime"}
    assert manifest["policy"] == {"name": "tiny", "reference": "tests.test_bundle:TiedPolicy",
                                  "config": {"width": 8, "kind": "tiny"}, "architecture": None}
    assert manifest["target"] == {"name": "jetson-orin-nano", "memory_gb": 8}
    assert manifest["inputs"] == [
        {"name": "image", "shape": ["batch", 3, 4, 4], "dtype": "float32", "low": 0.0, "high": 1.0},
        {"name": "instruction", "shape": ["batch", 6], "dtype": "int64", "low": 0, "high": 15}]
    assert manifest["outputs"] == [{"name": "action", "shape": ["batch", 8, 2], "dtype": "float32"}]
    assert manifest["action_normalization"] == {"mean": [0.1, -0.2], "std": [1.5, 0.5]}
    assert manifest["chunk_size"] == 8 and manifest["control_rate_hz"] == 20.0
    assert manifest["layers"] == [{"name": "head", "precision": "int8", "sparsity": 0.5, "pattern": "2:4"}]
    assert spec_from_manifest(manifest) == policy.spec


def test_manifest_rejects_bad_layers_and_targets(policy):
    with pytest.raises(EdgevlaError, match="sparsity"):
        make_manifest(policy.spec, policy_name="p", target="cpu",
                      layers=[{"name": "a", "precision": "int8", "sparsity": 1.5, "pattern": "dense"}])
    with pytest.raises(EdgevlaError, match="needs name, precision"):
        make_manifest(policy.spec, policy_name="p", target="cpu", layers=[{"name": "a"}])
    with pytest.raises(EdgevlaError, match="target needs a name"):
        make_manifest(policy.spec, policy_name="p", target={"memory_gb": 8})


def test_written_bundle_hashes_every_file_and_loads(policy, manifest, contents, tmp_path):
    out = write_bundle(tmp_path / "bundle", contents, manifest)
    assert out == (tmp_path / "bundle").absolute()
    written = json.loads((out / "manifest.json").read_text())
    assert set(written["files"]) == set(contents)
    for rel, source in contents.items():
        data = _bytes_of(source)
        assert (out / rel).read_bytes() == data
        assert written["files"][rel] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    inspection = inspect_bundle(out)
    assert inspection.ok and inspection.problems == []
    assert sorted(inspection.files) == sorted((rel, len(_bytes_of(s)), True) for rel, s in contents.items())
    loaded = load_bundle(out)
    assert loaded.spec == policy.spec
    assert loaded.file("model.onnx").read_bytes() == contents["model.onnx"].read_bytes()
    assert _leftovers(tmp_path, keep="bundle") == ["exported.onnx"]  # no temporary directory behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_modified_missing_and_extra_files_are_reported_and_refused(manifest, contents, tmp_path):
    out = write_bundle(tmp_path / "b", contents, manifest)
    (out / "report.md").write_bytes(b"# Report, edited\n")
    (out / "plots" / "latency.png").unlink()
    (out / "notes.txt").write_text("mine")
    inspection = inspect_bundle(out)
    assert not inspection.ok
    assert inspection.modified == ["report.md"]
    assert inspection.missing == ["plots/latency.png"]
    assert inspection.extra == ["notes.txt"]
    by_path = {f.path: f for f in inspection.files}
    assert by_path["report.md"].sha256_ok is False and by_path["report.md"].bytes == 17
    assert by_path["plots/latency.png"].bytes is None
    assert by_path["model.onnx"].sha256_ok is True
    assert len(inspection.problems) == 3
    with pytest.raises(EdgevlaError, match="integrity check: .*report.md"):
        load_bundle(out)


def test_a_single_flipped_byte_is_detected(manifest, contents, tmp_path):
    out = write_bundle(tmp_path / "b", contents, manifest)
    data = bytearray((out / "weights.safetensors").read_bytes())
    data[-1] ^= 0x01
    (out / "weights.safetensors").write_bytes(bytes(data))
    assert inspect_bundle(out).modified == ["weights.safetensors"]


def test_output_path_that_is_a_file_is_refused(manifest, contents, tmp_path):
    target = tmp_path / "bundle"
    target.write_text("keep me")
    with pytest.raises(EdgevlaError, match="not a directory"):
        write_bundle(target, contents, manifest)
    assert target.read_text() == "keep me"
    assert _leftovers(tmp_path, keep="bundle") == ["exported.onnx"]


@pytest.mark.parametrize("foreign_manifest", [None, {"name": "my web app", "files": {}}])
def test_a_foreign_non_empty_directory_is_refused_and_untouched(manifest, contents, tmp_path, foreign_manifest):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "cat.jpg").write_bytes(b"\xff\xd8cat")
    if foreign_manifest is not None:
        (target / "manifest.json").write_text(json.dumps(foreign_manifest))
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(EdgevlaError, match="not an edgevla bundle"):
        write_bundle(target, contents, manifest)
    assert sorted(p.name for p in target.iterdir()) == before
    assert (target / "cat.jpg").read_bytes() == b"\xff\xd8cat"
    assert _leftovers(tmp_path, keep="photos") == ["exported.onnx"]


def test_an_existing_bundle_or_empty_directory_is_replaced(manifest, contents, tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()  # empty: fine to fill
    write_bundle(target, contents, manifest)
    (target / "stale.txt").write_text("from the old build")
    newer = {**contents, "report.md": b"# Report v2\n"}
    del newer["plots/latency.png"]
    write_bundle(target, newer, manifest)
    inspection = inspect_bundle(target)
    assert inspection.ok
    assert (target / "report.md").read_bytes() == b"# Report v2\n"
    assert not (target / "stale.txt").exists() and not (target / "plots").exists()
    assert _leftovers(tmp_path, keep="bundle") == ["exported.onnx"]


class _FailingSource(type(pathlib.Path())):
    """A file whose reading breaks after the first chunk (a failing disk, a Ctrl-C)."""

    error: BaseException = OSError(5, "Input/output error")

    def open(self, *args, **kwargs):
        error = self.error

        class Reader:
            calls = 0

            def read(self, n=-1):
                Reader.calls += 1
                if Reader.calls > 1:
                    raise error
                return b"x" * 10

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Reader()


@pytest.mark.parametrize("error, expected", [(OSError(5, "Input/output error"), EdgevlaError),
                                             (RuntimeError("boom"), RuntimeError),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_a_failure_mid_write_leaves_nothing_behind(manifest, contents, tmp_path, error, expected):
    source = tmp_path / "big.bin"
    source.write_bytes(b"0123456789" * 10)
    failing = _FailingSource(source)
    failing.error = error
    with pytest.raises(expected):
        write_bundle(tmp_path / "bundle", {**contents, "zz/big.bin": failing}, manifest)
    assert not (tmp_path / "bundle").exists()
    assert _leftovers(tmp_path, keep="bundle") == ["big.bin", "exported.onnx"]


def test_a_failed_rewrite_keeps_the_previous_bundle(manifest, contents, tmp_path):
    target = write_bundle(tmp_path / "bundle", contents, manifest)
    before = json.loads((target / "manifest.json").read_text())
    source = tmp_path / "big.bin"
    source.write_bytes(b"0123456789" * 10)
    with pytest.raises(EdgevlaError, match="Input/output error"):
        write_bundle(target, {**contents, "zz/big.bin": _FailingSource(source)}, manifest)
    assert inspect_bundle(target).ok
    assert json.loads((target / "manifest.json").read_text()) == before
    assert _leftovers(tmp_path, keep="bundle") == ["big.bin", "exported.onnx"]


def test_parent_that_cannot_be_created_is_refused(manifest, contents, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(EdgevlaError, match="cannot create"):
        write_bundle(blocker / "bundle", contents, manifest)
    assert blocker.read_text() == "x"


def test_read_only_parent_is_refused(manifest, contents, tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        with pytest.raises(EdgevlaError, match="not writable"):
            write_bundle(parent / "bundle", contents, manifest)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_bad_file_entries_and_manifests_are_refused(manifest, contents, tmp_path):
    for rel in ("../escape.txt", "/abs.txt", "manifest.json", "a//b.txt", "./x.txt", ""):
        with pytest.raises(EdgevlaError, match="plain relative path"):
            write_bundle(tmp_path / "b", {rel: b"x"}, manifest)
    with pytest.raises(EdgevlaError, match="bytes or a pathlib.Path"):
        write_bundle(tmp_path / "b", {"report.md": "# text, not bytes"}, manifest)
    with pytest.raises(EdgevlaError, match="is not a file"):
        write_bundle(tmp_path / "b", {"model.onnx": tmp_path / "absent.onnx"}, manifest)
    with pytest.raises(EdgevlaError, match="lacks inputs"):
        write_bundle(tmp_path / "b", contents, {k: v for k, v in manifest.items() if k != "inputs"})
    with pytest.raises(EdgevlaError, match="not plain JSON"):
        write_bundle(tmp_path / "b", contents, {**manifest, "recipe": {"lr": float("nan")}})
    assert not (tmp_path / "b").exists()
    with pytest.raises(EdgevlaError, match="not an edgevla bundle"):
        inspect_bundle(tmp_path)
    with pytest.raises(EdgevlaError, match="not an edgevla bundle"):
        load_bundle(tmp_path / "nowhere")


def test_weights_round_trip_with_tied_tensors_and_metadata(policy, tmp_path):
    path = save_weights(policy, tmp_path / "w" / "weights.safetensors")
    tensors, metadata = load_weights(path)
    state = policy.state_dict()
    assert set(tensors) == set(state)
    for name, value in state.items():
        assert torch.equal(tensors[name], value)
    assert torch.equal(tensors["head.weight"], tensors["embed.weight"])  # both aliases stored
    assert json.loads(metadata["edgevla.spec"]) == policy.spec.to_dict()
    assert json.loads(metadata["edgevla.config"]) == {"width": 8, "kind": "tiny"}
    assert metadata["edgevla.policy"].endswith("TiedPolicy")
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.safetensors"]
    fresh = TiedPolicy()
    fresh.load_state_dict(tensors)
    assert torch.equal(fresh.embed.weight, policy.embed.weight)
