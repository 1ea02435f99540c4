"""An Octo-style policy with a padded observation history, for `edgevla bench e2e` of masked attention.

H steps of tokens (image patches, proprio, a readout token per step) through `nn.TransformerEncoder` under a
block-causal boolean mask; a per-sample count of valid steps (an int observation) pads the oldest ones with
`src_key_padding_mask`, so a padded step's tokens see only padded keys (PyTorch's eval fast path returns NaN
there; edgevla builds and exports the reference path). An MLP head on the last readout.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy octo_policy:make
--set prune.scope=null [--quantize w8a8] -o octo`. Random init: latency and agreement, not success.
"""

import torch
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


class OctoPolicy(nn.Module):
    """Octo-like: a history of H observation steps (image patches + proprio), each step a group of tokens;
    readout tokens per step attend to their step and earlier (block-causal bool mask), observation tokens never
    attend to readouts; a per-sample count of valid history steps masks padded steps (key_padding_mask built
    from an int observation). An MLP action head on the last readout."""
    def __init__(self, H=3, d=64, chunk=4, adim=7):
        super().__init__()
        self.spec = PolicySpec(observations=(
            TensorSpec("images", (H, 3, 16, 16), low=0, high=1),
            TensorSpec("proprio", (H, 8), low=-1, high=1),
            TensorSpec("valid_steps", (1,), dtype="int64", low=1, high=H)),
            action=TensorSpec("actions", (chunk, adim), low=-1, high=1))
        self.patch = nn.Conv2d(3, d, 8, 8)        # 4 patches per step
        self.prop = nn.Linear(8, d)
        self.readout = nn.Parameter(torch.randn(1, 1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, H, 6, d) * 0.02)
        per = 6                                   # 4 patches + proprio + readout
        T = H * per
        step = torch.arange(T) // per
        is_readout = (torch.arange(T) % per) == per - 1
        # True = not allowed
        mask = (step[None, :] > step[:, None]) | (is_readout[None, :] & ~is_readout[:, None]) \
            | (is_readout[None, :] & is_readout[:, None] & (step[None, :] != step[:, None]))
        self.register_buffer("mask", mask)
        self.register_buffer("token_step", step)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d, 128), nn.GELU(), nn.Linear(128, chunk * adim))
        self.H, self.per, self.chunk, self.adim = H, per, chunk, adim

    def forward(self, images, proprio, valid_steps):
        B, H = images.shape[:2]
        p = self.patch(images.flatten(0, 1)).flatten(2).transpose(1, 2).reshape(B, H, 4, -1)
        s = self.prop(proprio)[:, :, None]
        r = self.readout.expand(B, H, -1, -1)
        tokens = (torch.cat([p, s, r], 2) + self.pos).reshape(B, H * self.per, -1)
        # pad the oldest steps: a sample with v valid steps keeps the last v
        padded = self.token_step[None, :] < (H - valid_steps)
        h = self.trunk(tokens, mask=self.mask, src_key_padding_mask=padded)
        out = self.head(h[:, -1])
        return torch.tanh(out).view(B, self.chunk, self.adim)


def make():
    torch.manual_seed(0)
    return OctoPolicy().eval()
