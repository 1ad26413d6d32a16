"""SIREN zoos through the zoo spec, builder, store and CLI (family = "siren")."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gensight.cli import main
from gensight.data import load_dataset
from gensight.zoo import (
    SpecError,
    ZooSpec,
    ZooStoreError,
    build_zoo,
    plan_shards,
    siren_images,
    verify_zoo,
)
from gensight.zoo.siren import fit_sirens, psnr, render
from gensight.zoo.store import LOCK_NAME

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits-siren.toml"

# 12 images x 2 fits = 24 members in 3 shards of 8; 20 steps: a few seconds in all.
TINY = {"name": "tiny-siren", "dataset": "digits", "seed": 5, "shard_size": 8,
        "architecture": {"family": "siren", "hidden": [16, 16], "omega_0": 30.0},
        "siren": {"fits_per_image": 2, "steps": 20, "lr": 0.001, "target_psnr": 20.0,
                  "images": 12}}
TINY_TOML = """
name = "tiny-siren"
dataset = "digits"
seed = 5
shard_size = 8
[architecture]
family = "siren"
hidden = [16, 16]
omega_0 = 30.0
[siren]
fits_per_image = 2
steps = 20
lr = 0.001
target_psnr = 20.0
images = 12
"""
COLUMNS = {"member_id", "image_id", "split", "image_index", "label", "fit_index", "seed",
           "epoch", "is_final", "finite", "shard", "shard_pos", "steps_used", "mse", "psnr"}


def siren_spec(**over):
    data = {**TINY, **over}
    return ZooSpec.from_dict({k: v for k, v in data.items() if v is not None})


def with_siren(**over):
    return siren_spec(siren={**TINY["siren"], **over})


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def dataset_image(ds, split: str, index: int) -> torch.Tensor:
    return ds.split(split)[0][index] * 2 - 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("siren") / "zoo"
    return build_zoo(ZooSpec.from_dict(TINY), root)


# --- 1. the spec ------------------------------------------------------------------------------
def test_spec_round_trips_through_dict_json_and_toml(tmp_path):
    s = ZooSpec.from_dict(TINY)
    assert s.is_siren and s.n_members == 24 and s.siren.steps == 20
    for again in (ZooSpec.from_dict(s.to_dict()), ZooSpec.from_dict(json.loads(s.to_json()))):
        assert again == s and again.content_hash() == s.content_hash()
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    assert ZooSpec.from_toml(path) == s
    example = ZooSpec.from_toml(EXAMPLE)
    assert ZooSpec.from_dict(example.to_dict()) == example
    assert example.to_dict() == {
        "name": "digits-siren", "dataset": "digits", "seed": 0, "shard_size": 512,
        "architecture": {"family": "siren", "hidden": [32, 32], "omega_0": 30.0},
        "siren": {"fits_per_image": 5, "steps": 300, "lr": 0.001, "target_psnr": 40.0,
                  "images": 0}}
    # defaults: an empty [siren] table; no early stop is target_psnr None (JSON null)
    plain = siren_spec(name=None, siren={}, architecture={"family": "siren"})
    assert plain.to_dict()["siren"] == {"fits_per_image": 1, "steps": 300, "lr": 0.001,
                                        "target_psnr": None, "images": 0}
    assert plain.to_dict()["architecture"] == {"family": "siren", "hidden": [32, 32],
                                               "omega_0": 30.0}
    assert ZooSpec.from_dict(json.loads(plain.to_json())) == plain
    assert plain.n_members == 1797 and plain.name == "digits-siren"


def test_hash_follows_the_recipe_not_the_name():
    base = ZooSpec.from_dict(TINY)
    assert siren_spec(name="other").content_hash() == base.content_hash()
    # ints written for floats, and "every image" written out, normalize to the same spec
    assert siren_spec(architecture={"family": "siren", "hidden": [16, 16], "omega_0": 30}
                      ).content_hash() == base.content_hash()
    assert with_siren(images=1797).content_hash() == with_siren(images=0).content_hash()
    changed = [with_siren(lr=0.002), with_siren(steps=21), with_siren(fits_per_image=3),
               with_siren(images=11), with_siren(target_psnr=30.0), with_siren(target_psnr=None),
               siren_spec(architecture={"family": "siren", "hidden": [16, 16], "omega_0": 10}),
               siren_spec(architecture={"family": "siren", "hidden": [16, 17]}),
               siren_spec(seed=6), siren_spec(dataset="mnist5k"), siren_spec(shard_size=4)]
    hashes = {s.content_hash() for s in changed}
    assert len(hashes) == len(changed) and base.content_hash() not in hashes


@pytest.mark.parametrize("over, fragment", [
    # classifier fields do not apply
    *[({key: value}, f"{key}: does not apply to family 'siren'") for key, value in [
        ("configs", 4), ("seeds_per_config", 2), ("mode", "grid"), ("hparams", {"lr": [0.1]}),
        ("checkpoints", [0, "final"]), ("shifts", ["fog"]), ("severities", [1]),
        ("store_logits", False)]],
    # the [siren] table
    ({"siren": None}, "siren: missing; family 'siren' needs a [siren] table"),
    ({"architecture": {"family": "mlp", "hidden": [8]}},
     "siren: applies only to family 'siren' (architecture.family is 'mlp')"),
    ({"siren": 5}, "siren: expected a table"),
    ({"siren": {"step": 3}}, "siren: unknown field(s) ['step']"),
    *[({"siren": {"fits_per_image": v}}, "siren.fits_per_image: expected an integer >= 1")
      for v in (0, 1.5, True, "2")],
    *[({"siren": {"steps": v}}, "siren.steps: expected an integer >= 1") for v in (0, -1, 3.0)],
    ({"siren": {"steps": 2**64}}, "siren.steps: 18446744073709551616 is too large"),
    *[({"siren": {"lr": v}}, "siren.lr: expected a finite number > 0")
      for v in (0, -0.1, math.inf, math.nan, True, "0.001", 10**400)],
    *[({"siren": {"target_psnr": v}}, "siren.target_psnr: expected a finite number > 0")
      for v in (math.inf, math.nan, -3.0, 0, "40", True)],
    *[({"siren": {"images": v}}, "siren.images: expected an integer >= 0")
      for v in (-1, 2.0, False)],
    ({"siren": {"images": 1798}}, "siren.images: 1,798 is more than the 1,797 images of 'digits'"),
    # the architecture
    *[({"architecture": {"family": "siren", "hidden": v}}, "architecture.hidden: expected a "
       "non-empty list of positive ints") for v in ([], [0], [8.0], [True], 32)],
    *[({"architecture": {"family": "siren", "omega_0": v}},
       "architecture.omega_0: expected a finite number > 0") for v in (0, -30, math.inf, "30",
                                                                      True)],
    ({"architecture": {"family": "siren", "channels": [4]}},
     "architecture: unknown field(s) ['channels'] for family 'siren'"),
    # the dataset and the common fields
    ({"dataset": "mnist1d"}, "dataset: family 'siren' fits images; expected one of ['digits', "
                             "'mnist5k', 'mnist5k@14'], got 'mnist1d'"),
    ({"dataset": "mnist5k@14", "architecture": {"family": "mlp"}, "siren": None},
     "dataset: unknown dataset 'mnist5k@14'"),
    ({"seed": -1}, "seed: expected an integer >= 0, got -1"),
    ({"shard_size": 0}, "shard_size: expected an integer >= 1, got 0"),
    ({"name": ""}, "name: expected a non-empty string"),
])
def test_bad_siren_specs_give_one_line_errors_naming_the_field(over, fragment):
    with pytest.raises(SpecError) as info:
        siren_spec(**over)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_members_image_order_and_shards():
    s = ZooSpec.from_dict(TINY)
    members = s.members()
    assert len(members) == 24 == s.n_members
    assert [m.member_id for m in members[:4]] == [
        "train-00000-f0", "train-00000-f1", "test-00000-f0", "test-00000-f1"]
    assert len({m.member_id for m in members}) == 24 and len({m.seed for m in members}) == 24
    for m in members:  # seeds from (spec seed, split, image, fit) only
        code = ("train", "val", "test").index(m.split)
        assert m.seed == int(np.random.default_rng([5, code, m.image_index, m.seed_index])
                             .integers(2**31 - 1))
    # a bigger zoo keeps the members (ids and seeds) of a smaller one
    more = with_siren(images=40).members()
    assert [(m.member_id, m.seed) for m in more[:24]] == [(m.member_id, m.seed) for m in members]
    # the image order interleaves the splits: every split in a tiny zoo, all images in a full one
    assert {m.split for m in members} == {"train", "val", "test"}
    order = with_siren(images=0).image_order()
    assert len(order) == 1797 and len(set(order)) == 1797
    assert sorted(i for s_, i in order if s_ == "val") == list(range(359))
    plans = plan_shards(s)
    assert [len(p.members) for p in plans] == [8, 8, 8]
    assert [m for p in plans for m in p.members] == members


def test_images_are_the_dataset_in_minus_one_to_one_and_pooled():
    s = ZooSpec.from_dict(TINY)
    images = siren_images(s)
    ds = load_dataset("digits")
    assert images.x.shape == (12, 1, 8, 8) and images.x.dtype == torch.float32
    for k, (split, index) in enumerate(s.image_order()):
        assert torch.equal(images.x[k], dataset_image(ds, split, index))
        assert int(images.labels[k]) == int(ds.split(split)[1][index])
    pooled = siren_spec(dataset="mnist5k@14", siren={"images": 3})
    px = siren_images(pooled).x
    mnist = load_dataset("mnist5k")
    assert px.shape == (3, 1, 14, 14)
    for k, (split, index) in enumerate(pooled.image_order()):
        want = F.avg_pool2d(mnist.split(split)[0][index:index + 1], 2)[0] * 2 - 1
        assert torch.equal(px[k], want)
    assert float(px.min()) >= -1 and float(px.max()) <= 1


# --- 2. the built zoo -------------------------------------------------------------------------
def test_rows_splits_by_image_and_labels(built):
    t = built.table
    assert COLUMNS <= set(t.columns) and len(t) == 24 and built.complete
    assert not {"optimizer", "test_acc", "config_id"} & set(t.columns)
    assert t["is_final"].all() and (t["epoch"] == 20).all() and t["finite"].all()
    assert ((t["steps_used"] >= 0) & (t["steps_used"] <= 20)).all()
    # early stop: a member either reached the target or took every step
    assert ((t["psnr"] >= 20.0) | (t["steps_used"] == 20)).all()
    per_image = t.groupby("image_id")
    assert (per_image.size() == 2).all() and len(per_image) == 12
    for col in ("split", "image_index", "label"):
        assert (per_image[col].nunique() == 1).all()  # the fits of an image share its split
    assert (t.groupby(["split", "image_index"])["image_id"].nunique() == 1).all()
    assert set(t["split"]) == {"train", "val", "test"}
    ds = load_dataset("digits")
    for row in t.itertuples():
        assert int(ds.split(row.split)[1][row.image_index]) == row.label
    assert built.manifest["siren"] == {"omega_0": 30.0, "size": 8}
    assert built.space.num_params == 2 * 16 + 16 + 16 * 16 + 16 + 16 + 1
    assert verify_zoo(built.root).ok


def test_stored_weights_are_a_direct_fit_and_render_to_the_stored_psnr(built):
    t = built.table
    ds = load_dataset("digits")
    for _, part in t.groupby("shard"):
        part = part.sort_values("shard_pos")
        images = torch.stack([dataset_image(ds, s, i)
                              for s, i in zip(part["split"], part["image_index"], strict=True)])
        fit = fit_sirens(images, part["seed"].tolist(), hidden=(16, 16), omega_0=30.0,
                         steps=20, lr=0.001, target_psnr=20.0)
        direct = fit.population.to_weight_batch()
        loaded = built.weights(part)
        for a, b in zip(direct.tensors(), loaded.tensors(), strict=True):
            assert torch.equal(a, b)
        assert fit.steps_used.tolist() == part["steps_used"].tolist()
        # render the loaded weights: the stored PSNR to 1e-3 dB
        out = render(loaded, 8, omega_0=built.manifest["siren"]["omega_0"])
        mse = (out - images).square().flatten(1).mean(1)
        np.testing.assert_allclose(psnr(mse).numpy(), part["psnr"].to_numpy(), atol=1e-3)
        np.testing.assert_allclose(mse.numpy(), part["mse"].to_numpy(), rtol=1e-6)
    # the modules of a row are SIRENs that draw the same image
    row = t.iloc[[5]]
    (module,) = built.modules(row)
    from gensight.zoo.siren import coordinate_grid

    drawn = module(coordinate_grid(8)).reshape(1, 1, 8, 8)
    assert torch.allclose(drawn, render(built.weights(row), 8), atol=1e-6)


def test_summary_is_psnr_per_split(built):
    summary = built.summary()
    assert list(summary.index) == ["train", "val", "test", "all"]
    assert summary.loc["all", "members"] == 24
    assert summary.loc["all", "median"] == pytest.approx(built.table["psnr"].median())


# --- 3. resume --------------------------------------------------------------------------------
def test_resumed_build_is_byte_identical(built, tmp_path):
    root = tmp_path / "resumed"
    partial = build_zoo(ZooSpec.from_dict(TINY), root, max_shards=1)
    assert len(partial.table) == 8 and not partial.complete
    with pytest.raises(ZooStoreError, match="another spec"):
        build_zoo(with_siren(lr=0.002), root)  # a changed recipe is refused
    steps = []
    build_zoo(ZooSpec.from_dict(TINY), root, progress=lambda d, t, s: steps.append((d, s)))
    assert file_hashes(root) == file_hashes(built.root)
    assert max(s for _, s in steps) >= 1  # on_step moved the progress within a shard
    assert steps[-1] == (24, 0)


# --- 4. the CLI -------------------------------------------------------------------------------
def test_cli_build_info_verify(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_TOML)
    out = tmp_path / "zoo"
    assert main(["zoo", "build", str(spec), "--out", str(out), "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "24 members in 3 shard(s)" in err and "24 rows" in err
    assert main(["zoo", "info", str(out)]) == 0
    info = " ".join(capsys.readouterr().out.split())  # undo rich's line wrapping
    assert "24 members, 24 built, complete, verified" in info
    assert "median PSNR" in info and "SIREN 2-16-16-1, omega_0 30" in info
    assert "accuracy" not in info and "optimizer" not in info
    assert main(["zoo", "verify", str(out)]) == 0


# --- 5. the example and the size estimate ------------------------------------------------------
def test_example_size_estimate():
    s = ZooSpec.from_toml(EXAMPLE)
    est = s.check_size()
    assert est.members == 8985 == s.n_members == len(s.members())
    assert est.epochs_total == 8985 * 300
    assert est.disk_bytes == 8985 * 1185 * 4  # float32 final weights of 2-32-32-1
    per_step = 18e-6 + 64 * (6 * (2 * 32 + 32 * 32 + 32) + 2 * 64 * 20) / 6.3e10
    assert est.seconds == pytest.approx(8985 * 300 * per_step)
    assert 30 < est.seconds < 300  # all 300 steps; members stop early at 40 dB (~46 steps)
    # the calibration points: ~47 us per member-step at 14x14 and 27.5 us at 8x8
    for dataset, us in (("mnist5k@14", 47), ("digits", 27.5)):
        one = siren_spec(dataset=dataset, architecture={"family": "siren"},
                         siren={"images": 1, "steps": 1}).size_estimate()
        assert one.seconds == pytest.approx(us * 1e-6, rel=0.05)
    assert len(plan_shards(s)) == 18


def test_check_size_refuses_huge_siren_specs():
    with pytest.raises(SpecError, match="more than 100,000 members"):
        siren_spec(dataset="mnist5k", siren={"fits_per_image": 21, "images": 5000}).check_size()
    with pytest.raises(SpecError, match="200,000 steps, more than 100,000"):
        with_siren(steps=200_000).check_size()
    assert with_siren(steps=200_000).check_size(allow_large=True).members == 24


@pytest.mark.parametrize("command", [["predict"], ["measures"], ["report", "--out", "r.html"],
                                     ["estimate", "--shift", "fog"]])
def test_classifier_commands_refuse_a_siren_zoo_in_one_line(built, command, capsys):
    assert main([command[0], str(built.root), *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "is a SIREN zoo" in err and f"'gensight {command[0]}' needs a classifier zoo" in err
