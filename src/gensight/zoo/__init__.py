"""Model zoos: specs, population training, and the on-disk store.

- :class:`ZooSpec`: a validated zoo configuration (TOML or dict).
- :func:`build_zoo`: train a spec's members, batched, into a resumable zoo directory.
- :class:`Zoo`: open a zoo; its ``table`` (pandas) and ``weights(rows)`` (WeightBatch).
- :func:`verify_zoo`: check every shard's content hashes, the index and the manifest;
  ``repair=True`` moves damaged shards aside and rebuilds the index.
"""

from gensight.zoo.build import build_zoo, plan_shards
from gensight.zoo.spec import Member, SizeEstimate, SpecError, ZooSpec
from gensight.zoo.store import VerifyReport, Zoo, ZooLockedError, ZooStoreError, verify_zoo

__all__ = ["Member", "SizeEstimate", "SpecError", "VerifyReport", "Zoo", "ZooLockedError",
           "ZooSpec", "ZooStoreError", "build_zoo", "plan_shards", "verify_zoo"]
