"""Weight spaces: shapes and neuron-permutation symmetries of feedforward networks.

- :class:`WeightSpace` describes a network's parameters (built from an ``nn.Module``).
- :class:`WeightBatch` holds the weights of B networks as ``(B, C, n_out, n_in, *filter)``
  tensors.
- :func:`random_permutation`, :func:`permute`, :func:`permute_module` act with neuron
  permutations.
"""

from gensight.weightspace.batch import WeightBatch, nonfinite_members
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
    "Sine",
    "Symmetry",
    "WeightBatch",
    "WeightSpace",
    "identity_permutation",
    "nonfinite_members",
    "permute",
    "permute_module",
    "permuted_copy",
    "random_permutation",
]
