"""Pruning: importance criteria, weight masks (unstructured, N:M) and structured pruning.

Everything takes any ``torch.nn.Module``; nothing here knows the zoo's layout.

>>> from edgevla.prune import WandaImportance, nm_masks, apply_masks, prune_structured
>>> apply_masks(policy, nm_masks(policy, 2, 4, WandaImportance(policy, batches)))    # 2:4 sparsity
>>> prune_structured(policy, "neurons", 0.5, round_to=16, scope="trunk")              # shrink MLPs
>>> gradual_prune(policy, "unstructured", 0.8, steps=4, finetune=lambda m, i: distill(m, teacher, 50))
>>> recover(policy, teacher, RecoveryConfig(max_steps=500, max_loss=0.02))             # KD until within budget
>>> allocate_sparsity(layer_sensitivity(teacher, scope="trunk"), 0.5)                   # non-uniform sparsity
"""

from __future__ import annotations

from .graph import Coupling, DependencyGraph, Group
from .importance import (BlockInfluence, GroupImportance, MagnitudeImportance, TaylorImportance, WandaImportance,
                         action_loss, task_batches)
from .masks import (PRUNABLE, LayerSparsity, WeightMask, apply_masks, baked_copy, follows_nm, from_nm_rows, nm_mask,
                    nm_masks, nm_rows, prunable_layers, remove_masks, sparsity_report, sparsity_threshold, takes_nm,
                    threshold_mask, unstructured_masks)
from .recovery import (Confirmation, Distiller, Evaluation, RecoveryConfig, RecoveryFailed, RecoveryReport,
                       action_errors, distill, heldout_batch, kd_loss, recover, task_stream)
from .schedule import (ScheduleResult, ScheduleStep, cubic_sparsity, exact_unstructured_masks, gradual_prune,
                       partial_nm_masks, schedule_sparsities)
from .sensitivity import (Allocation, SensitivityCurve, SensitivityResult, allocate_sparsity, apply_allocation,
                          layer_sensitivity, plot_sensitivity)
from .structured import (STRUCTURES, PrunedGroup, StructuredResult, groups_of, kept_units, plan, prune_structured,
                         residual_blocks)

__all__ = [
    "Allocation", "Confirmation", "Distiller", "Evaluation", "RecoveryConfig", "RecoveryFailed", "RecoveryReport",
    "ScheduleResult", "ScheduleStep", "SensitivityCurve", "SensitivityResult", "action_errors", "allocate_sparsity",
    "apply_allocation",
    "cubic_sparsity", "distill", "exact_unstructured_masks", "gradual_prune", "heldout_batch", "kd_loss",
    "layer_sensitivity", "partial_nm_masks", "plot_sensitivity", "recover", "schedule_sparsities", "task_stream",
    "BlockInfluence", "Coupling", "DependencyGraph", "Group", "GroupImportance", "LayerSparsity",
    "MagnitudeImportance", "PrunedGroup", "STRUCTURES", "StructuredResult", "TaylorImportance", "WandaImportance",
    "WeightMask", "action_loss", "apply_masks", "baked_copy", "follows_nm", "from_nm_rows", "groups_of", "kept_units",
    "nm_mask", "nm_masks", "nm_rows", "plan", "PRUNABLE", "prunable_layers", "prune_structured", "remove_masks",
    "residual_blocks", "sparsity_report", "sparsity_threshold", "takes_nm", "task_batches", "threshold_mask",
    "unstructured_masks",
]
