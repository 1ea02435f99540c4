"""A Llama-style action trunk, for `edgevla bench e2e` of the layer kinds modern VLA backbones use.

Observation tokens (proprioception and pooled image features, projected) pass four decoder layers as Llama and Gemma
write them: RMSNorm before attention and MLP, rotary position embeddings (`rotate_half`), grouped-query attention
(8 query heads over 2 key/value heads, repeated with `repeat_interleave`) under a causal mask through
`F.scaled_dot_product_attention`, and a SwiGLU MLP (`silu(gate(x)) * up(x)` into `down`). The last eight tokens' states
give a chunk of eight 7-D actions.

Build: `PYTHONPATH=benchmarks/cpu/policies edgevla build --target x86-64-cpu --policy llama_policy:make
--set prune.scope=null [--quantize w8a8] -o llama`. Random init: for latency and agreement with ONNX Runtime, not
for closed-loop success.
"""

import torch
import torch.nn.functional as F
from torch import nn

from edgevla.spec import PolicySpec, TensorSpec


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads, kv_heads, max_tokens=64, base=10000.0):
        super().__init__()
        # Llama's names: structured pruning updates the counts when it removes heads
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, d // heads
        self.q_proj = nn.Linear(d, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, d, bias=False)
        inv = 1.0 / (base ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        angles = torch.outer(torch.arange(max_tokens).float(), inv)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.cos[:t], self.sin[:t]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Layer(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d, eps=1e-6)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=1e-6)
        self.self_attn = Attention(d, heads, kv_heads)
        self.gate_proj, self.up_proj = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaPolicy(nn.Module):
    def __init__(self, d=256, heads=8, kv_heads=2, hidden=688, depth=4, tokens=16, features=48, chunk=8, adim=7):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("tokens", (tokens, features), "float32", -1.0, 1.0),),
                               action=TensorSpec("actions", (chunk, adim), "float32", -1.0, 1.0))
        self.embed = nn.Linear(features, d)
        self.layers = nn.ModuleList(Layer(d, heads, kv_heads, hidden) for _ in range(depth))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, adim)
        self.chunk = chunk

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return torch.tanh(self.head(self.norm(x)[:, -self.chunk:]))


def make():
    torch.manual_seed(0)
    return LlamaPolicy().eval()
