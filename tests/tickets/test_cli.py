"""``gensight tickets`` end to end on a tiny zoo, and its one-line errors."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import gensight.cli as gcli

torch.set_num_threads(1)

CONFIG = """
name = "tiny-cli"
inits = 6
shard_size = 3
rounds = 2
random_rounds = [1, 2]
[architecture]
hidden = [5]
[train]
epochs = 1
batch_size = 256
"""


def test_build_eval_predict(tmp_path, capsys):
    cfg = tmp_path / "t.toml"
    cfg.write_text(CONFIG)
    zoo = tmp_path / "zoo"
    assert gcli.main(["tickets", "build", str(cfg), "--out", str(zoo), "--quiet"]) == 0
    assert "6 inits x 2 rounds" in capsys.readouterr().out
    assert gcli.main(["tickets", "verify", str(zoo)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    rep = tmp_path / "rep"
    assert gcli.main(["tickets", "eval", str(zoo), "--out", str(rep), "--test-inits", "2",
                      "--epochs", "1", "--predictors", "hnp,mlp", "--connected",
                      "--quiet"]) == 0
    summary = pd.read_csv(rep / "summary.csv")
    assert set(summary["method"]) == {"imp", "imp-oneshot", "magnitude", "snip", "random",
                                      "nfn-hnp", "mlp", "nfn-hnp+connected", "mlp+connected"}
    assert set(summary["round"]) == {1, 2} and (summary["inits"] == 2).all()
    imp = summary[summary.method == "imp"]
    assert (imp["iou_mean"] == 1.0).all()
    results = pd.read_csv(rep / "results.csv")
    assert sorted(set(results["init_id"])) == [4, 5]
    # the stored IMP and random accuracies are reproduced by the evaluation's training
    from gensight.data import load_dataset
    from gensight.tickets.store import TicketZoo

    table = TicketZoo.open(zoo).table
    # the evaluation trains in another population (batch) size than the build, so float32
    # sums may round differently: allow one test example of difference
    one_example = 1 / len(load_dataset("digits").y_test)
    for kind in ("imp", "random"):
        stored = table[(table.kind == kind) & (table["round"] == 2) & (table.init_id >= 4)]
        got = results[(results.method == kind) & (results["round"] == 2)]
        assert sorted(stored["test_acc"]) == pytest.approx(sorted(got["test_acc"]),
                                                           abs=one_example + 1e-9)
    page = (rep / "index.html").read_text()
    assert "data:image/png;base64," in page and "nfn-hnp" in page
    pred = rep / "predictor-hnp.safetensors"
    out = tmp_path / "masks.safetensors"
    assert gcli.main(["tickets", "predict", str(pred), "--zoo", str(zoo), "--inits", "4,5",
                      "--round", "2", "--out", str(out)]) == 0
    masks = load_file(out)
    counts = TicketZoo.open(zoo).counts[2]
    assert [masks[k].dtype for k in ("1.weight", "3.weight")] == [torch.uint8] * 2
    assert [int(masks[k][0].sum()) for k in ("1.weight", "3.weight")] == counts
    # --connected: the predictor's logits decoded without dead ends
    from safetensors import safe_open

    from gensight.tickets import MaskPredictor, connected_topk

    out_c = tmp_path / "masks-connected.safetensors"
    assert gcli.main(["tickets", "predict", str(pred), "--zoo", str(zoo), "--inits", "4,5",
                      "--round", "2", "--out", str(out_c), "--connected"]) == 0
    est = MaskPredictor.load(pred)
    w45, b45 = TicketZoo.open(zoo).inits([4, 5])
    want = connected_topk(est.decision_function(w45, b45, counts), counts)
    got_c = load_file(out_c)
    assert all(torch.equal(got_c[k].bool(), m) for k, m in zip(("1.weight", "3.weight"), want,
                                                               strict=True))
    with safe_open(str(out_c), "pt") as f:
        assert f.metadata()["decoding"] == "connected"
    # one initial checkpoint
    ckpt = tmp_path / "init.safetensors"
    w, b = TicketZoo.open(zoo).inits([5])
    save_file({"1.weight": w[0][0], "1.bias": b[0][0], "3.weight": w[1][0],
               "3.bias": b[1][0]}, str(ckpt))
    out2 = tmp_path / "one.safetensors"
    assert gcli.main(["tickets", "predict", str(pred), "--init", str(ckpt), "--round", "2",
                      "--out", str(out2)]) == 0
    assert torch.equal(load_file(out2)["1.weight"][0], masks["1.weight"][1])
    capsys.readouterr()
    # --inits belongs to --zoo
    assert gcli.main(["tickets", "predict", str(pred), "--init", str(ckpt), "--inits", "5",
                      "--round", "2", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "--inits" in err and "--init" in err and err.count("\n") == 1
    # a bias of the wrong shape: one line naming the --init file
    bad = tmp_path / "bad-bias.safetensors"
    save_file({"1.weight": w[0][0], "1.bias": b[0][0][:3], "3.weight": w[1][0],
               "3.bias": b[1][0]}, str(bad))
    assert gcli.main(["tickets", "predict", str(pred), "--init", str(bad), "--round", "2",
                      "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'1.bias' has shape (3,); expected (5,)" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_eval_and_predict_with_the_cvae(tmp_path, capsys):
    """``--objective cvae``: NFN predictors only (checked before any fit), and a fitted CVAE
    samples another ticket per ``--z-seed`` at the same per-layer counts."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(CONFIG)
    zoo = tmp_path / "zoo"
    assert gcli.main(["tickets", "build", str(cfg), "--out", str(zoo), "--quiet"]) == 0
    rep = tmp_path / "rep"
    capsys.readouterr()
    assert gcli.main(["tickets", "eval", str(zoo), "--out", str(rep), "--test-inits", "2",
                      "--epochs", "1", "--predictors", "np,mlp", "--objective", "cvae",
                      "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--objective cvae trains NFN predictors only; pass --predictors hnp,np" in err
    assert err.count("\n") == 1 and not rep.exists()
    assert gcli.main(["tickets", "eval", str(zoo), "--out", str(rep), "--test-inits", "2",
                      "--epochs", "1", "--predictors", "np", "--objective", "cvae",
                      "--quiet"]) == 0
    pred = rep / "predictor-np.safetensors"
    from gensight.tickets.store import TicketZoo

    counts = TicketZoo.open(zoo).counts[2]
    got = {}
    for seed in (None, 1, 1, 2):
        out = tmp_path / f"m{seed}.safetensors"
        extra = [] if seed is None else ["--z-seed", str(seed)]
        assert gcli.main(["tickets", "predict", str(pred), "--zoo", str(zoo), "--round", "2",
                          "--out", str(out), *extra]) == 0
        masks = load_file(out)
        assert [int(masks[k][0].sum()) for k in ("1.weight", "3.weight")] == counts
        if seed is not None:
            assert torch.equal(masks["1.weight"], got.setdefault(seed, masks["1.weight"]))
    assert not torch.equal(got[1], got[2])
    capsys.readouterr()
    bce = tmp_path / "rep-bce"
    assert gcli.main(["tickets", "eval", str(zoo), "--out", str(bce), "--test-inits", "2",
                      "--epochs", "1", "--predictors", "np", "--quiet"]) == 0
    capsys.readouterr()
    assert gcli.main(["tickets", "predict", str(bce / "predictor-np.safetensors"), "--zoo",
                      str(zoo), "--round", "2", "--out", str(tmp_path / "x.safetensors"),
                      "--z-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "z_seed needs a predictor fitted with objective 'cvae'" in err
    assert err.count("\n") == 1


def test_eval_fits_on_oneshot_targets(tmp_path, capsys, monkeypatch):
    """``--target imp-oneshot``: the predictors learn the one-shot IMP masks of the training
    inits (not the stored iterative ones); a bad target is refused by argparse."""
    from gensight.tickets import MaskPredictor
    from gensight.tickets.report import oneshot_masks
    from gensight.tickets.store import TicketZoo

    cfg = tmp_path / "t.toml"
    cfg.write_text(CONFIG)
    zoo = tmp_path / "zoo"
    assert gcli.main(["tickets", "build", str(cfg), "--out", str(zoo), "--quiet"]) == 0
    seen = {}
    real_fit = MaskPredictor.fit

    def spy(self, space, w, b, masks, counts, **kw):
        seen["masks"] = masks
        return real_fit(self, space, w, b, masks, counts, **kw)
    monkeypatch.setattr(MaskPredictor, "fit", spy)
    rep = tmp_path / "rep"
    assert gcli.main(["tickets", "eval", str(zoo), "--out", str(rep), "--test-inits", "2",
                      "--epochs", "1", "--predictors", "hnp", "--target", "imp-oneshot",
                      "--quiet"]) == 0
    t = TicketZoo.open(zoo)
    want = oneshot_masks(t, [0, 1, 2, 3], [1, 2])
    assert sorted(seen["masks"]) == [1, 2]
    for k in (1, 2):
        assert all(torch.equal(x, y) for x, y in zip(seen["masks"][k], want[k], strict=True))
    # at round 2 the one-shot targets are not the stored IMP masks
    assert not all(torch.equal(x, y) for x, y in zip(want[2], t.masks(2, "imp", [0, 1, 2, 3]),
                                                     strict=True))
    assert "target imp-oneshot masks" in (rep / "index.html").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        gcli.main(["tickets", "eval", str(zoo), "--out", str(rep), "--target", "oneshot"])
    assert "invalid choice: 'oneshot'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    ('name = "x"\nrate = 2.0\n', "field 'rate' must be in (0, 1); got 2.0"),
    ('name = "x"\nepochs = 3\n', "unknown field 'epochs'"),
    ('name = "x"\n[train]\nlr = "fast"\n', "field 'train.lr' must be a number; got 'fast'"),
    ("name = \n", "is not valid TOML"),
])
def test_bad_config_is_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert gcli.main(["tickets", "build", str(cfg), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_other_errors_are_one_line(tmp_path, capsys):
    assert gcli.main(["tickets", "eval", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    missing = tmp_path / "nope.safetensors"
    assert gcli.main(["tickets", "predict", str(missing), "--zoo", str(tmp_path), "--round",
                      "1", "--out", str(tmp_path / "o")]) == 2
    assert "no predictor file" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    assert gcli.main(["tickets", "verify", str(tmp_path)]) == 2
    assert "is not a tickets zoo manifest" in capsys.readouterr().err


def test_bench_quick_uses_its_own_zoo(monkeypatch):
    """``--quick`` builds a 128-init config: the full run's zoo would refuse it."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tickets.py"
    spec = importlib.util.spec_from_file_location("bench_tickets_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []

    class Stop(Exception):
        pass

    def fake_build(config, out):
        seen.append((config.inits, Path(out).name))
        raise Stop

    monkeypatch.setattr(bench, "build_tickets", fake_build)
    threads = torch.get_num_threads()
    try:
        for argv in (["bench", "--quick"], ["bench"]):
            monkeypatch.setattr(sys, "argv", argv)
            with torch.random.fork_rng(devices=[]), pytest.raises(Stop):
                bench.main()
    finally:
        torch.set_num_threads(threads)
    assert seen == [(128, "tickets-bench-quick"), (640, "tickets-bench")]
