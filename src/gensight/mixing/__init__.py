"""Choosing the training-data mixture online (``gensight mix``).

- :class:`ADO`: Adaptive Data Optimization (arXiv 2410.11820): per-domain scaling laws
  (:func:`fit_power_law`, laws (1)-(2)), learning-speed forecast, credit assignment, prior, time
  smoothing and an exploration floor; ``policy()`` and ``update(domain_losses, counts)``.
- Baselines with the same interface: :class:`Natural`, :class:`Uniform`, :class:`ODM`
  (online data mixing, arXiv 2312.02406).
- :class:`MixtureSampler`: draws batches of byte windows by the current mixture.
- :func:`load_domains`: five offline text domains with fixed splits; :class:`ByteLM`: a small
  byte-level Transformer; :func:`train_mixture`: a resumable training run
  (``gensight mix train``); :func:`write_report` (``gensight mix report``).

Importing this package does not import torch; :class:`ByteLM`, :func:`train_mixture` and the
report are loaded on first use.
"""

from __future__ import annotations

from gensight.mixing.data import DOMAINS, TextDomain, load_domains
from gensight.mixing.policies import (
    ADO,
    ODM,
    POLICIES,
    MixingPolicy,
    Natural,
    Uniform,
    floor_distribution,
    make_policy,
)
from gensight.mixing.sampler import MixtureSampler, domain_losses
from gensight.mixing.scaling import MixingError, PowerLaw, fit_power_law, smooth_losses

_LAZY = {
    "ByteLM": "gensight.mixing.model",
    "MixTrainConfig": "gensight.mixing.train",
    "train_mixture": "gensight.mixing.train",
    "evaluate": "gensight.mixing.train",
    "write_report": "gensight.mixing.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gensight.mixing' has no attribute {name!r}")


__all__ = [
    "ADO", "DOMAINS", "ODM", "POLICIES", "ByteLM", "MixTrainConfig", "MixingError",
    "MixingPolicy", "MixtureSampler", "Natural", "PowerLaw", "TextDomain", "Uniform",
    "domain_losses", "evaluate", "fit_power_law", "floor_distribution", "load_domains",
    "make_policy", "smooth_losses", "train_mixture", "write_report",
]
