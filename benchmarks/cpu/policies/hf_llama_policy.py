"""A Llama-style action policy written the way Hugging Face's modeling files write Llama and Gemma, which is how
most VLA backbones reach us (OpenVLA, pi0's PaliGemma, SmolVLA): hand-written RMSNorm (a float32 upcast,
``self.weight * x``; Gemma's ``x * (1 + w)``), ``repeat_kv`` by ``x[:, :, None].expand().reshape()``, eager
attention (``q @ k.transpose(2, 3) * scaling``, a ``finfo.min`` causal mask added, a float32 softmax), rotary
tables computed from position ids in the forward, shapes unpacked with ``*``. ``make`` is Llama's (SwiGLU),
``make_gemma`` Gemma's (``1 + w`` norms, GEGLU with tanh GELU). Same sizes as ``llama_policy``.
``make_outliers`` is Llama's with the outlier channels trained LLM backbones grow: six hidden channels whose
norm weights are 20x the rest, as in every layer of OPT / Llama checkpoints (Dettmers et al., 2022).
"""
import torch
from torch import nn
import torch.nn.functional as F
from edgevla.spec import PolicySpec, TensorSpec


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, num_key_value_heads):
        super().__init__()
        self.head_dim = hidden_size // num_attention_heads
        self.num_key_value_groups = num_attention_heads // num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_attention_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(q.dtype)
        attn_output = torch.matmul(attn_weights, v)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())


class MLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, act=F.silu):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, kv, h, norm, act):
        super().__init__()
        self.self_attn = Attention(d, heads, kv)
        self.mlp = MLP(d, h, act)
        self.input_layernorm = norm(d)
        self.post_attention_layernorm = norm(d)

    def forward(self, hidden_states, attention_mask, position_embeddings):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, position_embeddings, attention_mask)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class HFPolicy(nn.Module):
    def __init__(self, d=256, heads=8, kv=2, h=688, depth=4, gemma=False, T=16):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("tokens", (T, 48), "float32", -1.0, 1.0),),
                               action=TensorSpec("act", (8, 7), "float32", -1.0, 1.0))
        norm = GemmaRMSNorm if gemma else LlamaRMSNorm
        act = (lambda x: F.gelu(x, approximate="tanh")) if gemma else F.silu
        self.embed = nn.Linear(48, d)
        self.layers = nn.ModuleList(DecoderLayer(d, heads, kv, h, norm, act) for _ in range(depth))
        self.norm = norm(d)
        self.rotary_emb = RotaryEmbedding(d // heads)
        self.head = nn.Linear(d, 7)
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal", mask[None, None], persistent=False)
        self.register_buffer("positions", torch.arange(T)[None], persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        pe = self.rotary_emb(x, self.positions.expand(x.shape[0], -1))
        for layer in self.layers:
            x = layer(x, self.causal, pe)
        return torch.tanh(self.head(self.norm(x)[:, -8:]))


def make(gemma=False):
    torch.manual_seed(0)
    m = HFPolicy(gemma=gemma).eval()
    with torch.no_grad():  # trained-looking norm weights
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight") or n == "norm.weight":
                p.copy_((0.0 if gemma else 1.0) + 0.3 * torch.randn_like(p))
    return m


def make_gemma():
    return make(gemma=True)


def make_outliers():
    m = make()
    channels = torch.tensor([7, 42, 99, 130, 181, 250])
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight"):
                p[channels] *= 20.0
    return m
