"""Weight spaces: shapes and neuron-permutation symmetries of feedforward networks.

- :class:`WeightSpace` describes a network's parameters (built from an ``nn.Module``).
- :class:`WeightBatch` holds the weights of B networks as ``(B, C, n_out, n_in, *filter)``
  tensors.
- :class:`ParamSpace` / :class:`ParamBatch`: any module's parameters with the permutation
  spec of UNF (recurrent, residual, normalized networks).
- :func:`random_permutation`, :func:`permute`, :func:`permute_module` act with neuron
  permutations.
"""

from gensight.weightspace.batch import WeightBatch, nonfinite_members
from gensight.weightspace.params import (
    ParamBatch,
    ParamSpace,
    nonfinite_param_members,
    space_from_dict,
)
from gensight.weightspace.permutation import (
    NeuronPermutation,
    identity_permutation,
    permute,
    permute_module,
    permuted_copy,
    random_permutation,
)
from gensight.weightspace.space import LayerSpec, Sine, Symmetry, WeightSpace

__all__ = [
    "LayerSpec",
    "NeuronPermutation",
    "ParamBatch",
    "ParamSpace",
    "Sine",
    "Symmetry",
    "WeightBatch",
    "WeightSpace",
    "identity_permutation",
    "nonfinite_members",
    "nonfinite_param_members",
    "permute",
    "permute_module",
    "permuted_copy",
    "random_permutation",
    "space_from_dict",
]
