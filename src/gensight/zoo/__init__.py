"""Model zoos: specs, population training, and the on-disk store.

- :class:`ZooSpec`: a validated zoo configuration (TOML or dict); ``family = "siren"`` with a
  ``[siren]`` table (:class:`SirenRecipe`) makes a zoo of SIRENs, one per image and fit.
- :func:`build_zoo`: train a spec's members, batched, into a resumable zoo directory.
- :class:`Zoo`: open a zoo; its ``table`` (pandas) and ``weights(rows)`` (WeightBatch).
- :func:`siren_images`: the images (in [-1, 1]) that a SIREN zoo's members fit.
- :func:`verify_zoo`: check every shard's content hashes, the index and the manifest;
  ``repair=True`` moves damaged shards aside and rebuilds the index.
"""

from gensight.zoo.build import SirenImages, build_zoo, plan_shards, siren_images
from gensight.zoo.spec import Member, SirenRecipe, SizeEstimate, SpecError, ZooSpec
from gensight.zoo.store import VerifyReport, Zoo, ZooLockedError, ZooStoreError, verify_zoo

__all__ = ["Member", "SirenImages", "SirenRecipe", "SizeEstimate", "SpecError", "VerifyReport",
           "Zoo", "ZooLockedError", "ZooSpec", "ZooStoreError", "build_zoo", "plan_shards",
           "siren_images", "verify_zoo"]
