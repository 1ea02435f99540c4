"""Pruning: importance criteria, weight masks (unstructured, N:M) and structured pruning.

Everything takes any ``torch.nn.Module``; nothing here knows the zoo's layout.

>>> from edgevla.prune import WandaImportance, nm_masks, apply_masks, prune_structured
>>> apply_masks(policy, nm_masks(policy, 2, 4, WandaImportance(policy, batches)))    # 2:4 sparsity
>>> prune_structured(policy, "neurons", 0.5, round_to=16, scope="trunk")              # shrink MLPs
"""

from __future__ import annotations

from .graph import Coupling, DependencyGraph, Group
from .importance import (BlockInfluence, GroupImportance, MagnitudeImportance, TaylorImportance, WandaImportance,
                         action_loss, task_batches)
from .masks import (LayerSparsity, WeightMask, apply_masks, follows_nm, nm_mask, nm_masks, remove_masks,
                    sparsity_report, sparsity_threshold, threshold_mask, unstructured_masks)
from .structured import (STRUCTURES, PrunedGroup, StructuredResult, groups_of, kept_units, plan, prune_structured,
                         residual_blocks)

__all__ = [
    "BlockInfluence", "Coupling", "DependencyGraph", "Group", "GroupImportance", "LayerSparsity",
    "MagnitudeImportance", "PrunedGroup", "STRUCTURES", "StructuredResult", "TaylorImportance", "WandaImportance",
    "WeightMask", "action_loss", "apply_masks", "follows_nm", "groups_of", "kept_units", "nm_mask", "nm_masks",
    "plan", "prune_structured", "remove_masks", "residual_blocks", "sparsity_report", "sparsity_threshold",
    "task_batches", "threshold_mask", "unstructured_masks",
]
