"""Symmetry-aware model merging: align hidden units, then average (FLEET-MERGE).

Networks trained apart cannot be averaged weight by weight: their hidden units are in
different orders. This package finds the permutation that matches one network's units to
another's, merges N networks by aligning them to a common reference and averaging, and runs
FLEET-MERGE's distributed loop (Wang et al., "Robot Fleet Learning via Policy Merging",
ICLR 2024, arXiv 2310.01362): local training on each member's own data, then rounds of
align-and-average and broadcast, so a fleet shares weights instead of data.

- Permutation specs (:mod:`gensight.merge.spec`): :func:`perm_spec` for ``nn.Sequential``
  MLPs/CNNs (via :class:`~gensight.weightspace.WeightSpace`), :class:`RecurrentClassifier`
  (GRU/LSTM + linear readout; the hidden permutation acts per gate block on ``weight_ih``
  rows, on both axes of ``weight_hh`` and on the readout's columns) and :class:`ResidualMLP`
  (tied residual stream).
- Alignment (:mod:`gensight.merge.align`): :func:`weight_matching` and
  :func:`activation_matching` (Git Re-Basin, arXiv 2209.04836, Sec. 3.1-3.2, solved with
  ``scipy.optimize.linear_sum_assignment``), :func:`apply_permutation`, :func:`align`.
- Merging (:mod:`gensight.merge.merge`): :func:`merge` (to a member or to the running
  average, optionally weighted), :func:`average` (naive), :func:`interpolate`,
  :func:`linear_path` and :func:`loss_barrier`.
- Fleets (:mod:`gensight.merge.fleet`): :class:`Task`, :func:`label_subset_tasks`,
  :func:`train_members` (members trained together with ``torch.func.vmap``, or as Ray
  tasks), :func:`fleet_merge`, :func:`compare_merges` and :func:`alignment_inputs`.

Example::

    from gensight.merge import merge, weight_matching, apply_permutation
    perm = weight_matching(net_a, net_b)          # NeuronPermutation for MLPs/CNNs
    b_aligned = apply_permutation(net_b, perm)    # same function as net_b
    merged = merge([net_a, net_b, net_c]).model   # aligned to net_a, then averaged
"""

from gensight.merge.align import (
    Alignment,
    Permutation,
    activation_matching,
    align,
    apply_permutation,
    check_models,
    find_permutation,
    named_permutations,
    unit_activations,
    weight_matching,
)
from gensight.merge.fleet import (
    FleetResult,
    Task,
    alignment_inputs,
    compare_merges,
    fleet_merge,
    label_subset_tasks,
    pooled_task,
    train_members,
)
from gensight.merge.merge import (
    MergeResult,
    alignment_objective,
    average,
    evaluate,
    interpolate,
    linear_path,
    loss_barrier,
    merge,
)
from gensight.merge.spec import (
    Axis,
    PermSpec,
    RecurrentClassifier,
    ResidualMLP,
    as_sequence,
    perm_spec,
    permute_state,
)

__all__ = [
    "Alignment",
    "Axis",
    "FleetResult",
    "MergeResult",
    "PermSpec",
    "Permutation",
    "RecurrentClassifier",
    "ResidualMLP",
    "Task",
    "activation_matching",
    "align",
    "alignment_inputs",
    "alignment_objective",
    "apply_permutation",
    "as_sequence",
    "average",
    "check_models",
    "compare_merges",
    "evaluate",
    "find_permutation",
    "fleet_merge",
    "interpolate",
    "label_subset_tasks",
    "linear_path",
    "loss_barrier",
    "merge",
    "named_permutations",
    "perm_spec",
    "permute_state",
    "pooled_task",
    "train_members",
    "unit_activations",
    "weight_matching",
]
