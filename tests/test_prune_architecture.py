"""A structurally pruned model's architecture delta: recorded as JSON, replayed on a fresh model, exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from edgevla.errors import EdgevlaError
from edgevla.models.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from edgevla.models.vla import VLAConfig, VLAPolicy
from edgevla.prune import prune_structured
from edgevla.prune.architecture import architecture_delta, is_identity, rebuild

CFG = VLAConfig(d_model=32, n_heads=4, n_vision_layers=1, n_text_layers=1, n_trunk_layers=3, n_keypoints=4)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, 1, 3, 32, 32, generator=g), torch.randint(0, 16, (3, 6), generator=g),
            torch.rand(3, 2, generator=g))


def _pruned(structure: str, amount: float) -> VLAPolicy:
    torch.manual_seed(1)
    policy = VLAPolicy(CFG).eval()
    prune_structured(policy, structure, amount, scope="trunk")
    return policy


@pytest.mark.parametrize("structure,amount", [("neurons", 0.5), ("heads", 0.5), ("blocks", 0.34)])
def test_delta_replays_to_the_same_function(structure, amount):
    pruned = _pruned(structure, amount)
    delta = json.loads(json.dumps(architecture_delta(pruned, VLAPolicy(CFG))))  # survives JSON
    assert not is_identity(delta)
    rebuilt = rebuild(VLAPolicy(CFG), delta, pruned.state_dict()).eval()
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned.parameters())
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*x), pruned(*x), rtol=0, atol=0)


def test_delta_names_what_changed():
    heads = architecture_delta(_pruned("heads", 0.5), VLAPolicy(CFG))
    assert heads["attributes"]["trunk.0.attn"] == {"n_heads": 2}
    assert heads["attributes"]["trunk.0.attn.q"] == {"out_features": 16}
    assert heads["attributes"]["trunk.0.attn.out"] == {"in_features": 16}
    assert "vision.blocks.0.attn" not in heads["attributes"]  # outside the scope: untouched
    blocks = architecture_delta(_pruned("blocks", 0.34), VLAPolicy(CFG))
    assert len(blocks["removed"]) == 1 and blocks["removed"][0].startswith("trunk.")


def test_unpruned_model_has_an_identity_delta():
    assert is_identity(architecture_delta(VLAPolicy(CFG), VLAPolicy(CFG)))


def test_pruned_checkpoint_reloads_into_the_pruned_architecture(tmp_path):
    pruned = _pruned("neurons", 0.5)
    path = save_checkpoint(pruned, tmp_path / "p.safetensors")
    assert "architecture" in checkpoint_metadata(path)
    loaded = load_checkpoint(path)
    x = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), pruned(*x), rtol=0, atol=0)
    # An unpruned checkpoint carries no delta.
    plain = save_checkpoint(VLAPolicy(CFG), tmp_path / "u.safetensors")
    assert "architecture" not in checkpoint_metadata(plain)


def test_width_pruning_records_sliced_buffers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 4)
            self.register_buffer("offset", torch.arange(16.0), persistent=False)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + self.offset)

    torch.manual_seed(0)
    net = Net()
    net.a = nn.Linear(8, 6)  # as a width cut leaves it
    net.b = nn.Linear(6, 4)
    net.offset = torch.arange(6.0) * 2
    delta = architecture_delta(net, Net())
    assert delta["buffers"]["offset"]["shape"] == [6]
    rebuilt = rebuild(Net(), json.loads(json.dumps(delta)), net.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)


def test_mismatches_are_one_line_errors():
    pruned = _pruned("neurons", 0.5)
    delta = architecture_delta(pruned, VLAPolicy(CFG))
    with pytest.raises(EdgevlaError, match="do not fit"):
        rebuild(VLAPolicy(CFG), {**delta, "attributes": {}}, {**pruned.state_dict(), "extra.weight": torch.ones(1)})
    with pytest.raises(EdgevlaError, match="no module 'nope'"):
        rebuild(VLAPolicy(CFG), {**delta, "removed": ["nope"]}, pruned.state_dict())
    with pytest.raises(EdgevlaError, match="version"):
        rebuild(VLAPolicy(CFG), {**delta, "version": 99}, pruned.state_dict())
    swapped = VLAPolicy(CFG)
    swapped.ln_f = nn.BatchNorm1d(32)
    with pytest.raises(EdgevlaError, match="changed type"):
        architecture_delta(swapped, VLAPolicy(CFG))
