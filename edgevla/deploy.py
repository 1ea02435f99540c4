"""A bundle on the robot: open it, ask it for actions, run it in the control loop.

:class:`BundlePolicy` opens a bundle (every file's hash checked against the
manifest first) on one backend and answers observations with *real* action
chunks, the normalization of the manifest undone. Its :meth:`~BundlePolicy.controller`
runs it one action per control tick (:mod:`edgevla.control`)::

    policy = BundlePolicy("bundles/tiny-vla-jetson-agx-orin", backend="native")
    with policy, policy.controller(execute=4, lead=1) as control:
        while robot.ok():
            action = control.step(robot.observe, wait=budget_left)
            if action is not None:          # None: the next chunk is late, hold
                robot.command(action[0])
            robot.sleep_until_next_tick()

``edgevla eval`` and ``edgevla profile`` open bundles the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .backends import BACKENDS
from .bundle import LoadedBundle, load_bundle
from .control import ChunkController, Inference, TemporalEnsemble
from .errors import EdgevlaError


class BundlePolicy:
    """A verified bundle on one backend: observations in, real action chunks ``(batch, H, action_dim)`` out.

    ``backend``: one of :data:`edgevla.backends.BACKENDS`; ``native`` runs on
    the GPU where ``device`` says so (``auto``: a GPU target's bundle where our
    CUDA kernels can run), with ``kernel_tactics`` naming its tactics file.
    ``threads``: CPU threads of the native, ONNX Runtime and torch backends.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str = "native", device: str = "auto",
                 threads: int | None = None, kernel_tactics: str | None = None) -> None:
        if backend not in BACKENDS:
            raise EdgevlaError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        self.bundle: LoadedBundle = load_bundle(path)
        self.runner = bundle_runner(self.bundle, backend, threads, device, kernel_tactics)
        self.backend = backend
        self.spec = self.bundle.spec

    @property
    def control_rate_hz(self) -> float | None:
        """The control rate the bundle was built for (its target's)."""
        return self.spec.control_rate_hz

    @property
    def chunk_size(self) -> int:
        return self.spec.chunk_size

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.spec.denormalize(self.runner(obs))

    def controller(self, *, execute: int, lead: int = 0, inference: Inference | None = None) -> ChunkController:
        """This policy one action per control tick; see :class:`~edgevla.control.ChunkController`."""
        if execute > self.chunk_size:
            raise EdgevlaError(f"execute = {execute} actions of the bundle's chunks of {self.chunk_size}")
        return ChunkController(self, execute=execute, lead=lead, inference=inference)

    def ensemble(self, *, m: float = 0.01, inference: Inference | None = None) -> TemporalEnsemble:
        """This policy one action per control tick, temporally ensembled; see
        :class:`~edgevla.control.TemporalEnsemble`."""
        return TemporalEnsemble(self, m=m, inference=inference)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> BundlePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bundle_runner(bundle: LoadedBundle, backend: str, threads: int | None = None, device: str = "auto",
                  tactics: str | None = None):
    """The runner of ``backend`` for a bundle; ``native`` on a GPU where ``device`` says so (see native_device)."""
    from .backends import CudaNativeRunner, make_runner, native_device

    if backend == "torch":
        return make_runner("torch", policy=bundle_torch_policy(bundle, "backend 'torch'"), threads=threads)
    if backend == "native":
        gpu_target = bundle.manifest["target"].get("kind") == "gpu"
        if native_device(device, gpu_target) == "cuda":
            import onnx

            from .runtime.graph import float_input_layers

            float_inputs = float_input_layers(onnx.load(str(bundle.file("model.onnx")), load_external_data=False))
            return CudaNativeRunner(bundle_torch_policy(bundle, "the native backend on a GPU"), tactics_path=tactics,
                                    float_inputs=float_inputs)
    no_tactics_here(tactics)
    return make_runner(backend, onnx_path=bundle.file("model.onnx"), spec=bundle.spec, threads=threads)


def bundle_torch_policy(bundle: LoadedBundle, backend: str):
    """The bundle's PyTorch policy, rebuilt: quantized layers restored, structured shape changes replayed."""
    from .bundle import load_weights
    from .models.vla import VLAConfig, VLAPolicy

    tensors, _ = load_weights(bundle.file("weights.safetensors"))
    config = bundle.manifest["policy"].get("config")
    if not config:
        raise EdgevlaError(f"{backend} needs a bundle of an edgevla VLA policy (its config is in the "
                           f"manifest); this bundle's policy is {bundle.manifest['policy']['name']!r}: "
                           "use --backend onnxruntime")
    policy = VLAPolicy(VLAConfig.from_dict(config), name=bundle.manifest["policy"]["name"])
    architecture = bundle.manifest["policy"].get("architecture")
    try:
        from .quant import restore_quantized

        restore_quantized(policy, tensors)  # a quantized bundle: its layers come back fake-quant
        if architecture:  # structured pruning: replay its shape changes, then load
            from .prune.architecture import rebuild

            policy = rebuild(policy, architecture, tensors)
        else:
            policy.load_state_dict(tensors)
    except RuntimeError as e:
        raise EdgevlaError(f"the bundle's weights do not fit its policy config "
                           f"({str(e).strip().splitlines()[-1].strip()}): use --backend onnxruntime") from None
    return policy.eval()


def no_tactics_here(tactics: str | None) -> None:
    if tactics is not None:
        raise EdgevlaError("--kernel-tactics applies to the native backend on a GPU only (--backend native; "
                           "--device cuda where the GPU is not picked by default)")
