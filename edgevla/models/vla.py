"""The reference Vision-Language-Action policy, in one file.

    camera images ──► ViT patch encoder ─┐
    instruction ────► text encoder ──────┼─► transformer trunk ─► action head ─► H future actions
    proprio state ──► state embedding ───┘        (a readout token gathers the fused context)

Like ACT and pi0 the policy emits a *chunk* of H future actions per query, and
like nanoGPT it is plain modules — nn.Linear, nn.LayerNorm, a softmax
attention written out — so pruning and quantization see ordinary layers and the
ONNX graph is ordinary MatMul / Softmax / LayerNormalization.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spec import PolicySpec, TensorSpec


@dataclass
class VLAConfig:
    image_size: int = 32
    patch_size: int = 4
    n_cameras: int = 1
    vocab_size: int = 16
    text_len: int = 6
    state_dim: int = 2
    action_dim: int = 2
    chunk_size: int = 8
    d_model: int = 128
    n_heads: int = 4
    mlp_ratio: float = 4.0
    n_vision_layers: int = 2
    n_text_layers: int = 1
    n_trunk_layers: int = 3
    n_keypoints: int = 8
    action_mean: list[float] = field(default_factory=lambda: [0.0, 0.0])
    action_std: list[float] = field(default_factory=lambda: [1.0, 1.0])
    control_rate_hz: float = 30.0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLAConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown VLAConfig keys: {sorted(unknown)}")
        return cls(**d)


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections.

    Separate projections keep every head's slice visible to structured
    pruning (a head is rows of q/k/v and columns of ``out``).
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must divide into heads"
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        y = att.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, int(d_model * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class VisionEncoder(nn.Module):
    """ViT: non-overlapping patches, a linear patch embedding, transformer blocks."""

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        self.patch = cfg.patch_size
        self.patch_embed = nn.Linear(3 * cfg.patch_size**2, cfg.d_model)
        # Fixed 2D sin-cos positions: a patch's place on the table is readable
        # by a linear map from the first step of training (learned random
        # positions have to discover the grid first, which costs thousands of steps).
        self.register_buffer("pos", sincos_2d(cfg.image_size // cfg.patch_size, cfg.d_model), persistent=False)
        self.camera = nn.Parameter(torch.randn(1, cfg.n_cameras, 1, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_vision_layers))
        # FiLM (as in RT-1): the instruction scales and shifts the patch features
        # before and after every block, so "red" can light up red patches from
        # the first layer on instead of waiting for attention to discover it.
        self.film = nn.ModuleList(nn.Linear(cfg.d_model, 2 * cfg.d_model) for _ in range(cfg.n_vision_layers + 1))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.keypoints = SpatialSoftmax(cfg)

    def forward(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``images`` (B, cams, 3, H, W) in [0, 1]; ``condition`` (B, d_model), the pooled instruction."""
        b, n_cams, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b * n_cams, c, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b * n_cams, (h // p) * (w // p), c * p * p)
        x = self.patch_embed(x * 2.0 - 1.0) + self.pos  # pixels centred on 0
        cond = condition.repeat_interleave(n_cams, dim=0).unsqueeze(1)
        for i, blk in enumerate(self.blocks):
            x = self._film(i, x, cond)
            x = blk(x)
        x = self.ln(self._film(len(self.blocks), x, cond))
        keypoints = self.keypoints(x).reshape(b, n_cams * self.keypoints.n, 2)
        x = x.reshape(b, n_cams, -1, x.shape[-1]) + self.camera
        return x.reshape(b, -1, x.shape[-1]), keypoints

    def _film(self, i: int, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film[i](cond).chunk(2, dim=-1)
        return x * (1.0 + scale) + shift


class SpatialSoftmax(nn.Module):
    """Keypoints at pixel resolution from patch tokens (spatial soft-argmax).

    Each patch token predicts logits for the p x p pixels it covers, for each of
    K keypoints; a softmax over the whole image turns each keypoint's logits
    into a heat map whose expectation is an (x, y) position on the table. This
    is the spatial-softmax readout robot-learning policies have used since
    Levine et al. (2016): it hands the trunk coordinates instead of asking
    attention to rediscover geometry, and it trains in a few thousand steps.
    """

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        self.n = cfg.n_keypoints
        self.patch = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        self.logits = nn.Linear(cfg.d_model, cfg.n_keypoints * cfg.patch_size**2)
        c = (torch.arange(cfg.image_size, dtype=torch.float32) + 0.5) / cfg.image_size
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("coords", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, patches, d) -> (N, K, 2) expected (x, y) in [0, 1]."""
        n, g, p, k = tokens.shape[0], self.grid, self.patch, self.n
        z = self.logits(tokens).view(n, g, g, k, p, p)
        z = z.permute(0, 3, 1, 4, 2, 5).reshape(n, k, g * p * g * p)  # (N, K, H*W), pixels row-major
        return z.softmax(dim=-1) @ self.coords


class TextEncoder(nn.Module):
    def __init__(self, cfg: VLAConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, cfg.text_len, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_text_layers))
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x)


class VLAPolicy(nn.Module):
    """Images + instruction + state -> normalized action chunk (B, H, action_dim)."""

    def __init__(self, cfg: VLAConfig, name: str = "vla"):
        super().__init__()
        self.config = cfg
        self.name = name
        self.vision = VisionEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.keypoint_embed = nn.Linear(2, cfg.d_model)
        self.keypoint_id = nn.Parameter(torch.randn(1, cfg.n_cameras * cfg.n_keypoints, cfg.d_model) * 0.02)
        self.state_embed = nn.Sequential(nn.Linear(cfg.state_dim, cfg.d_model), nn.GELU(),
                                         nn.Linear(cfg.d_model, cfg.d_model))
        self.readout = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        # The readout token starts from the pooled instruction, so the first trunk
        # layer can already look for the named object (language-conditioned query).
        self.readout_from_text = nn.Linear(cfg.d_model, cfg.d_model)
        self.modality = nn.Parameter(torch.randn(1, 4, cfg.d_model) * 0.02)
        self.trunk = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_trunk_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.action_head = nn.Linear(cfg.d_model, cfg.chunk_size * cfg.action_dim)
        self.apply(_init_weights)
        # Input embeddings see raw pixels and coordinates: give them fan-in scaled
        # weights so the inputs are not drowned by the position embeddings at init.
        for lin in (self.vision.patch_embed, self.state_embed[0], self.keypoint_embed):
            nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)

    @property
    def spec(self) -> PolicySpec:
        c = self.config
        return PolicySpec(
            observations=(
                TensorSpec("image", (c.n_cameras, 3, c.image_size, c.image_size), "float32", 0.0, 1.0),
                TensorSpec("instruction", (c.text_len,), "int64", 0, c.vocab_size - 1),
                TensorSpec("state", (c.state_dim,), "float32", 0.0, 1.0),
            ),
            action=TensorSpec("actions", (c.chunk_size, c.action_dim), "float32", -1.0, 1.0),
            action_mean=tuple(c.action_mean),
            action_std=tuple(c.action_std),
            control_rate_hz=c.control_rate_hz,
        )

    def forward(self, image: torch.Tensor, instruction: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        t = self.text(instruction)
        pooled = t.mean(dim=1)
        v, keypoints = self.vision(image, pooled)
        v = v + self.modality[:, 0:1]
        k = self.keypoint_embed(keypoints * 2.0 - 1.0) + self.keypoint_id + self.modality[:, 3:4]
        t = t + self.modality[:, 1:2]
        s = self.state_embed(state * 2.0 - 1.0).unsqueeze(1) + self.modality[:, 2:3]
        query = self.readout + self.readout_from_text(pooled).unsqueeze(1)
        x = torch.cat([query, s, k, t, v], dim=1)
        for blk in self.trunk:
            x = blk(x)
        out = self.action_head(self.ln_f(x[:, 0]))
        return out.view(-1, self.config.chunk_size, self.config.action_dim)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(1, grid*grid, dim) sin-cos embedding of patch rows and columns."""
    assert dim % 4 == 0, "d_model must be a multiple of 4"
    freqs = 1.0 / (100.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    coords = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ax = xs.reshape(-1, 1) * freqs
    ay = ys.reshape(-1, 1) * freqs
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1).unsqueeze(0)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


CONFIGS: dict[str, VLAConfig] = {
    # <= 3M parameters; a trained checkpoint ships in the package.
    "tiny-vla": VLAConfig(d_model=96, n_heads=4, n_vision_layers=1, n_text_layers=1, n_trunk_layers=3),
    # 20-40M parameters; trained on demand (`edgevla zoo train small-vla`). 8-pixel
    # patches keep the token count (and so the training cost on 2 CPU cores) low.
    "small-vla": VLAConfig(patch_size=8, d_model=384, n_heads=6, n_vision_layers=2, n_text_layers=1,
                           n_trunk_layers=8),
    # >= 150M parameters, random init: for latency and memory only.
    "base-vla": VLAConfig(d_model=768, n_heads=12, n_vision_layers=8, n_text_layers=2, n_trunk_layers=14),
}
