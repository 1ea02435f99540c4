"""An ACT-style policy (Action Chunking with Transformers, ALOHA; LeRobot's `ACTPolicy`), written the way LeRobot
writes it: `nn.MultiheadAttention` in its default sequence-first layout, queries and keys with positional
embeddings added and values without (`q = k = x + pos`, `value=x`), post-norm encoder and decoder layers with
ReLU feed-forwards, a decoder of learned action queries over zeros that cross-attends to the encoder's output,
a convolutional image backbone whose feature map becomes tokens with a 2-D sine embedding, a latent token (zero
at inference, where the CVAE encoder is dropped) and a proprio token; a Linear head per chunk step.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy act_policy:make
--set prune.scope=null [--quantize w8a8] -o act`. Random init: latency and agreement, not success.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from edgevla.spec import PolicySpec, TensorSpec


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.1)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(0.1), nn.Dropout(0.1), nn.Dropout(0.1)

    def forward(self, x, pos_embed):
        skip = x
        q = k = x + pos_embed
        x = self.self_attn(q, k, value=x)[0]  # [0]: the output, not the attention weights
        x = self.norm1(skip + self.dropout1(x))
        skip = x
        x = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(skip + self.dropout2(x))


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.1)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=0.1)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x, encoder_out, decoder_pos_embed, encoder_pos_embed):
        q = k = x + decoder_pos_embed
        x = self.norm1(x + self.self_attn(q, k, value=x)[0])
        x = self.norm2(x + self.multihead_attn(query=x + decoder_pos_embed, key=encoder_out + encoder_pos_embed,
                                               value=encoder_out)[0])
        return self.norm3(x + self.linear2(self.dropout(F.relu(self.linear1(x)))))


def sine_embedding_2d(height, width, d, temperature=10000.0):
    """DETR's 2-D sine positional embedding: half the channels for y, half for x. (d, height, width)."""
    y = torch.arange(1, height + 1, dtype=torch.float32)[:, None].expand(height, width) / height * 2 * math.pi
    x = torch.arange(1, width + 1, dtype=torch.float32)[None, :].expand(height, width) / width * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(d // 2) // 2) / (d // 2))
    py, px = y[..., None] / freq, x[..., None] / freq
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).permute(2, 0, 1)


class ACTPolicy(nn.Module):
    def __init__(self, d=64, heads=4, ff=256, enc_layers=4, dec_layers=1, chunk=20, adim=14, state_dim=14):
        super().__init__()
        self.spec = PolicySpec(observations=(
            TensorSpec("image", (3, 48, 64), low=0, high=1),
            TensorSpec("state", (state_dim,), low=-1, high=1)),
            action=TensorSpec("actions", (chunk, adim), low=-1, high=1))
        self.backbone = nn.Sequential(  # a small ResNet-like stem: 48x64 -> 6x8 features
            nn.Conv2d(3, 32, 7, 2, 3), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU())
        self.input_proj = nn.Conv2d(128, d, 1)
        self.robot_state_proj = nn.Linear(state_dim, d)
        self.latent_proj = nn.Linear(32, d)
        self.latent_dim = 32
        self.tokens_pos = nn.Embedding(2, d)  # the latent's and the state's
        self.register_buffer("cam_pos", sine_embedding_2d(6, 8, d))
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, ff) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder_pos = nn.Embedding(chunk, d)
        self.action_head = nn.Linear(d, adim)
        self.chunk = chunk

    def forward(self, image, state):
        b = image.shape[0]
        latent = torch.zeros(b, self.latent_dim, dtype=image.dtype, device=image.device)  # the CVAE's mean prior
        features = self.input_proj(self.backbone(image))                     # (B, d, 6, 8)
        cam_tokens = features.flatten(2).permute(2, 0, 1)                    # (48, B, d): sequence first
        cam_pos = self.cam_pos.flatten(1).T[:, None]                         # (48, 1, d)
        tokens = torch.cat([torch.stack([self.latent_proj(latent), self.robot_state_proj(state)]), cam_tokens])
        pos = torch.cat([self.tokens_pos.weight[:, None], cam_pos])         # (50, 1, d)
        x = tokens
        for layer in self.encoder:
            x = layer(x, pos)
        decoder_pos = self.decoder_pos.weight[:, None]                       # (chunk, 1, d)
        y = torch.zeros(self.chunk, b, x.shape[-1], dtype=x.dtype, device=x.device)
        for layer in self.decoder:
            y = layer(y, x, decoder_pos, pos)
        y = self.decoder_norm(y).transpose(0, 1)                             # (B, chunk, d)
        return torch.tanh(self.action_head(y))


def make():
    torch.manual_seed(0)
    return ACTPolicy().eval()
