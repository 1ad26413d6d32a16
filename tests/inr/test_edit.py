"""INR editing (gensight.inr.edit): the edits, equivariance of the delta models, training on a
tiny SIREN zoo, the figure and the error paths. Seconds in all."""

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from gensight.errors import GensightError
from gensight.inr.edit import (
    METHODS,
    EditError,
    add_edit_arguments,
    contrast,
    dilate,
    edit_images,
    edit_kwargs,
    figure_edits,
    load_edit_data,
    make_edit_model,
    run_edit,
    train_edit_model,
)
from gensight.weightspace import random_permutation
from gensight.weightspace.permutation import permute
from gensight.zoo import ZooSpec, build_zoo, siren_images
from gensight.zoo.siren import render, siren_init
from gensight.zoo.store import Zoo

# 40 digit images x 1 fit (24 train / 8 val / 8 test), 2-16-16-1 SIRENs, 60 fitting steps.
TINY = {"name": "tiny-siren-edit", "dataset": "digits", "seed": 5, "shard_size": 64,
        "architecture": {"family": "siren", "hidden": [16, 16], "omega_0": 30.0},
        "siren": {"fits_per_image": 1, "steps": 60, "lr": 0.001, "target_psnr": None,
                  "images": 40}}


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids the spin-waiting of an oversubscribed shared
    CPU (the training test took 40 s instead of 2 s with 2 threads next to another job)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(ZooSpec.from_dict(TINY), tmp_path_factory.mktemp("inr-edit") / "zoo")


# --- edits ------------------------------------------------------------------------------------
def test_dilate_single_bright_pixel_is_a_3x3_block_and_clips_at_the_border():
    x = -torch.ones(1, 1, 6, 5)
    x[0, 0, 2, 2] = 1.0
    x[0, 0, 5, 0] = 0.5  # corner pixel: its block is cut by the border
    want = -torch.ones(6, 5)
    want[4:6, 0:2] = 0.5
    want[1:4, 1:4] = 1.0
    y = dilate(x)
    assert y.shape == x.shape and torch.equal(y[0, 0], want)
    assert torch.equal(dilate(x[0, 0]), want)  # (H, W) works too
    assert torch.equal(edit_images(x, "dilate"), y)


def test_dilate_matches_scipy_grey_dilation_on_random_images():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, size=(4, 1, 7, 9))
    y = dilate(torch.from_numpy(imgs)).numpy()
    for k in range(4):
        want = ndimage.grey_dilation(imgs[k, 0], size=(3, 3))
        np.testing.assert_array_equal(y[k, 0], want)
        # the border is the max over the window inside the image (cv2.dilate's behaviour)
        np.testing.assert_array_equal(
            want, ndimage.grey_dilation(imgs[k, 0], size=(3, 3), mode="nearest"))
    assert y[0, 0, 0, 0] == imgs[0, 0, :2, :2].max()


def test_contrast_golden():
    x = torch.tensor([[[[0.0, 0.2], [0.4, 0.6]]],       # mean 0.3, no clipping
                      [[[-0.8, 0.0], [0.0, 0.8]]]])     # mean 0, clipped to [-1, 1]
    y = contrast(x, factor=2.0)
    torch.testing.assert_close(y[0, 0], torch.tensor([[-0.3, 0.1], [0.5, 0.9]]))
    assert torch.equal(y[1, 0], torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(contrast(x, factor=1.0), x)
    torch.testing.assert_close(contrast(x, 0.5)[0, 0],
                               torch.tensor([[0.15, 0.25], [0.35, 0.45]]))
    with pytest.raises(EditError, match="factor"):
        contrast(x, factor=-1)


# --- equivariance -----------------------------------------------------------------------------
def _sirens():
    return siren_init(range(3), hidden=(8, 8)).to_weight_batch().to(torch.float64)


@pytest.mark.parametrize("method", ["nft", "nfn-hnp", "nfn-np"])
def test_nfn_delta_is_hnp_equivariant_and_edits_permuted_sirens_identically(method):
    w = _sirens()
    model = make_edit_model(method, w.space, width=6, depth=2, seed=1, scale_init=0.3)
    model = model.double().eval()
    perm = random_permutation(w.space, "hnp", generator=torch.Generator().manual_seed(3))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.perms)
    wp = permute(w, perm)
    with torch.no_grad():
        delta, delta_p = model(w), model(wp)
        assert delta_p.allclose(permute(delta, perm), rtol=1e-10, atol=1e-12)
        assert max(float(t.abs().max()) for t in delta.tensors()) > 1e-3  # not trivial
        edited, edited_p = render(w + delta, 12), render(wp + delta_p, 12)
    torch.testing.assert_close(edited_p, edited, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(edited, render(w, 12), atol=1e-4)  # the edit changes the INR


def test_mlp_delta_is_not_equivariant():
    w = _sirens()
    model = make_edit_model("mlp", w.space, mlp_width=32, depth=2, scale_init=1.0)
    model = model.double().eval()
    perm = random_permutation(w.space, "hnp", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not model(permute(w, perm)).allclose(permute(model(w), perm), atol=1e-6)


# --- training on a tiny zoo -------------------------------------------------------------------
def test_targets_are_the_edited_images_the_sirens_fit(zoo):
    data = load_edit_data(zoo, "dilate")
    images = siren_images(ZooSpec.from_dict(TINY)).x
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 24, "val": 8, "test": 8}
    assert data.size == 8 and data.omega_0 == 30.0
    for split in data.splits.values():
        assert (split.rows["split"] == split.rows["split"].iloc[0]).all()
        ids = torch.tensor(split.rows["image_id"].to_numpy(dtype=np.int64))
        assert torch.equal(split.images, images[ids])
        assert torch.equal(split.targets, dilate(images[ids]))
    small = load_edit_data(zoo, "contrast", max_train=5)
    assert len(small.splits["train"]) == 5
    assert torch.equal(small.splits["train"].targets, contrast(small.splits["train"].images))


def test_nfn_training_beats_the_do_nothing_baseline_and_is_seeded(zoo, tmp_path, one_thread):
    fits = {}
    df = run_edit(zoo, edit="dilate", methods=["nfn-hnp", "nft"], seeds=[0], steps=40,
                  width=8, depth=2, eval_every=10, fits=fits)
    assert list(df["method"]) == ["none", "nfn-hnp", "nft"]
    assert df.iloc[2].test_mse_mean < 0.9 * df.iloc[0].test_mse_mean
    assert {"test_mse_mean", "test_mse_std", "seconds"} <= set(df.columns)
    none, nfn = df.iloc[0], df.iloc[1]
    assert nfn.test_mse_mean < 0.9 * none.test_mse_mean
    assert nfn.val_mse_mean < 0.9 * none.val_mse_mean
    assert nfn.test_mse_std == 0.0 and nfn.n_seeds == 1 and nfn.seconds > 0
    fit = fits[("nfn-hnp", 0)]
    assert fit.best_step > 0 and fit.test_mse == nfn.test_mse_mean
    # seeded: the same seed gives the same model
    data = load_edit_data(zoo, "dilate")
    runs = [train_edit_model(make_edit_model("nfn-hnp", data.space, width=4, depth=1, seed=2),
                             data, steps=3, eval_every=3, seed=2) for _ in range(2)]
    assert runs[0].test_mse == runs[1].test_mse and runs[0].history == runs[1].history
    # the figure
    path = figure_edits(data, {"nfn-hnp": fit.model}, tmp_path / "fig" / "edits.png", n=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- errors and CLI helpers -------------------------------------------------------------------
def test_error_paths_are_one_line_gensight_errors(zoo):
    with pytest.raises(EditError, match="unknown edit 'blur'; known edits: dilate, contrast"):
        edit_images(torch.zeros(1, 1, 3, 3), "blur")
    with pytest.raises(EditError, match="unknown edit 'blur'"):
        run_edit(zoo, edit="blur")
    with pytest.raises(EditError, match="unknown method 'cnn'; known methods: nft, nfn-hnp, "
                                        "nfn-np, mlp"):
        run_edit(zoo, methods=["cnn"])
    mlp_zoo = Zoo(zoo.root, {"spec": {"architecture": {"family": "mlp"}}}, pd.DataFrame())
    with pytest.raises(EditError, match="needs a SIREN zoo.*'mlp' zoo") as info:
        run_edit(mlp_zoo)
    for err in (info.value,):
        assert isinstance(err, GensightError) and isinstance(err, ValueError)
        assert "\n" not in str(err)
    with pytest.raises(EditError, match="must be images"):
        dilate(torch.zeros(3))
    data = load_edit_data(zoo, "dilate", max_train=4, max_val=2, max_test=2)
    model = make_edit_model("nfn-hnp", data.space, width=2, depth=1)
    for bad in ({"warmup": -1}, {"steps": 0}):
        with pytest.raises(EditError, match=next(iter(bad))):
            train_edit_model(model, data, **bad)


def test_cli_arguments_round_trip_into_run_edit_keywords(capsys):
    parser = argparse.ArgumentParser()
    add_edit_arguments(parser)
    args = parser.parse_args(["--methods", "nfn-np,mlp", "--seeds", "0", "1", "--steps", "7",
                              "--edit", "contrast", "--figure", "out.png"])
    kw = edit_kwargs(args)
    assert kw["methods"] == ["nfn-np", "mlp"] and kw["seeds"] == [0, 1]
    assert kw["steps"] == 7 and kw["edit"] == "contrast" and args.figure == "out.png"
    assert list(edit_kwargs(parser.parse_args([]))["methods"]) == list(METHODS)
    with pytest.raises(SystemExit):
        parser.parse_args(["--methods", "nfn-hnp,bogus"])
    assert "known methods: nft, nfn-hnp, nfn-np, mlp" in capsys.readouterr().err


def test_cli_inr_edit_prints_the_table_and_writes_the_figure(zoo, tmp_path, capsys, one_thread):
    from gensight.cli import main

    fig = tmp_path / "edits.png"
    report = tmp_path / "report"
    assert main(["inr", "edit", str(zoo.root), "--methods", "nfn-hnp,mlp", "--steps", "4",
                 "--eval-every", "2", "--width", "4", "--mlp-width", "8", "--quiet",
                 "--figure", str(fig), "--report", str(report)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "INR editing (dilate)" in out
    for method in ("none", "nfn-hnp", "mlp"):
        assert f" {method} " in out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report: the zoo's PSNR table and renderings, the scores, the edits figure
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "INR editing" in page
    scores = pd.read_csv(report / "scores.csv")
    assert list(scores["method"]) == ["none", "nfn-hnp", "mlp"]
    assert "<td>nfn-hnp</td>" in page and "median_steps" in page
    assert sorted(p.name for p in report.iterdir()) == ["edits.png", "index.html",
                                                        "scores.csv", "zoo.csv"]
    with pytest.raises(SystemExit) as exit_:
        main(["inr", "edit", str(zoo.root), "--methods", "cnn"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nft, nfn-hnp, nfn-np, mlp" in err


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), "x", True])
def test_run_edit_refuses_a_bad_lr_or_scale_in_one_line(zoo, bad):
    for name in ("lr", "scale_init"):
        with pytest.raises(EditError, match=rf"^{name} must be a positive finite number; got "):
            run_edit(zoo, methods=["mlp"], steps=1, **{name: bad})


def test_figure_order_shows_one_siren_per_label_then_per_image_then_the_rest():
    from gensight.inr.edit import _figure_order

    # a class-sorted split: images 0, 1 of label 0 (2 fits each), image 2 of label 1
    rows = pd.DataFrame({"image_id": [0, 0, 1, 1, 2, 2], "label": [0, 0, 0, 0, 1, 1]})
    assert _figure_order(rows, 6).tolist() == [0, 4, 2, 1, 3, 5]
    assert _figure_order(rows, 2).tolist() == [0, 4]
    # without labels: one per image first
    assert _figure_order(rows[["image_id"]], 3).tolist() == [0, 2, 4]
