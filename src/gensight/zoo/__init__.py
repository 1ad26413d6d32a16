"""Model zoos: specs, population training, and the on-disk store.

- :class:`ZooSpec`: a validated zoo configuration (TOML or dict).
- :func:`build_zoo`: train a spec's members, batched, into a resumable zoo directory.
- :class:`Zoo`: open a zoo; its ``table`` (pandas) and ``weights(rows)`` (WeightBatch).
"""

from gensight.zoo.build import build_zoo, plan_shards
from gensight.zoo.spec import Member, SpecError, ZooSpec
from gensight.zoo.store import Zoo, ZooStoreError

__all__ = ["Member", "SpecError", "Zoo", "ZooSpec", "ZooStoreError", "build_zoo",
           "plan_shards"]
