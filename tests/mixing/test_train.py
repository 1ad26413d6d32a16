"""Training runs: resume equals uninterrupted, outputs, CLI and report, errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gensight.mixing import MixingError, TextDomain
from gensight.mixing.data import load_domains, split_bytes
from gensight.mixing.train import TIMING_COLUMNS, MixTrainConfig, train_mixture

torch.set_num_threads(1)


def _domains():
    rng = np.random.default_rng(0)
    text = {
        "abc": b"abcabcabd" * 300,
        "num": "".join(f"{i}+{i}={2 * i}\n" for i in range(400)).encode(),
        "noise": bytes(rng.integers(97, 123, 2500).astype(np.uint8)),
    }
    return {k: split_bytes(k, v) for k, v in text.items()}


def _cfg(policy="ado", steps=10):
    return MixTrainConfig(policy=policy, steps=steps, batch_size=6, context=12, d=16, layers=1,
                          heads=2, lr=3e-3, seed=1, eval_every=4, eval_windows=4,
                          checkpoint_every=3, domains=("abc", "num", "noise"),
                          policy_kwargs={"warmup": 3, "ignore": 0, "refit_every": 3}
                          if policy == "ado" else {})


class _Killed(Exception):
    pass


@pytest.mark.parametrize("policy", ["ado", "odm"])
def test_resume_after_a_kill_gives_the_same_log(tmp_path, policy):
    doms = _domains()
    full = train_mixture(_cfg(policy), tmp_path / "full", domains=doms)

    def kill_at_8(step, steps, row):  # after the checkpoint at step 6, before the one at 9
        if step == 8:
            raise _Killed

    with pytest.raises(_Killed):
        train_mixture(_cfg(policy), tmp_path / "cut", domains=doms, progress=kill_at_8)
    part = pd.read_parquet(tmp_path / "cut" / "log.parquet")
    assert part["step"].max() == 6
    resumed = train_mixture(_cfg(policy), tmp_path / "cut", domains=doms)
    a = pd.read_parquet(tmp_path / "full" / "log.parquet").drop(columns=list(TIMING_COLUMNS))
    b = pd.read_parquet(tmp_path / "cut" / "log.parquet").drop(columns=list(TIMING_COLUMNS))
    assert len(a) == 10
    pd.testing.assert_frame_equal(a, b, check_like=True)
    assert resumed["val"] == full["val"] and resumed["test"] == full["test"]
    if policy == "ado":
        assert a["ado_fits"].iloc[-1] >= 3  # fits before and after the kill
    # the mixture columns are distributions
    pis = a[[c for c in a.columns if c.startswith("pi_")]].to_numpy()
    np.testing.assert_allclose(pis.sum(1), 1.0)


def test_outputs_and_report(tmp_path):
    from safetensors import safe_open

    from gensight.mixing import write_report

    doms = _domains()
    res = train_mixture(_cfg("ado", steps=9), tmp_path / "ado", domains=doms)
    train_mixture(_cfg("uniform", steps=9), tmp_path / "uni", domains=doms)
    saved = json.loads((tmp_path / "ado" / "results.json").read_text())
    assert saved["val_mean"] == pytest.approx(np.mean(list(res["val"].values())))
    assert set(saved["val"]) == {"abc", "num", "noise"} and 0 < saved["policy_time_share"] < 1
    with safe_open(str(tmp_path / "ado" / "checkpoint.safetensors"), "numpy") as fh:
        keys = list(fh.keys())  # noqa: SIM118
    assert any(k.startswith("model.") for k in keys)
    assert any(k.startswith("optim.") for k in keys)
    assert "policy.loss_hist" in keys
    page = write_report([tmp_path / "ado", tmp_path / "uni"], tmp_path / "r" / "index.html")
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "http" not in text.split("<body>")[1]


def test_a_different_config_is_not_resumed(tmp_path):
    doms = _domains()
    train_mixture(_cfg("uniform", steps=3), tmp_path, domains=doms)
    with pytest.raises(MixingError, match="different config .*steps"):
        train_mixture(_cfg("uniform", steps=5), tmp_path, domains=doms)


def test_errors(tmp_path):
    doms = _domains()
    with pytest.raises(MixingError, match="unknown mixing policy 'best'"):
        train_mixture(_cfg("best"), tmp_path, domains=doms)
    doms["empty"] = TextDomain("empty", np.zeros(0, np.uint8), np.zeros(5, np.uint8),
                               np.zeros(5, np.uint8))
    with pytest.raises(MixingError, match="domain 'empty' has no data"):
        train_mixture(_cfg("uniform"), tmp_path, domains=doms)
    with pytest.raises(MixingError, match="domain 'x' has no data"):
        split_bytes("x", b"ab")
    with pytest.raises(MixingError, match="unknown text domain 'bible'"):
        load_domains(["bible"])


def test_cli_train_and_report(tmp_path, capsys):
    from gensight.cli import main

    out = tmp_path / "run"
    args = ["mix", "train", "--policy", "natural", "--steps", "4", "--max-bytes", "6000",
            "--domains", "pydoc,arithmetic", "--context", "16", "--d", "16", "--layers", "1",
            "--batch-size", "4", "--eval-every", "2", "--checkpoint-every", "2", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "uniform mix of held-out text" in printed and "arithmetic" in printed
    assert (out / "report.html").exists() and (out / "checkpoint.safetensors").exists()
    assert len(pd.read_parquet(out / "log.parquet")) == 4
    assert main(["mix", "report", str(out), "--out", str(tmp_path / "p.html")]) == 0
    assert (tmp_path / "p.html").exists()
    assert main(["mix", "train", "--policy", "doremi", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "unknown mixing policy 'doremi'" in err
    assert main(["mix", "train", "--steps", "0", "--out", str(tmp_path / "y")]) != 0
    assert "--steps must be a positive integer; got '0'" in capsys.readouterr().err


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, gensight.mixing, gensight.mixing.cli; print(sorted(m for m in "
            "('torch', 'scipy', 'pandas', 'matplotlib', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_short_test_splits_are_refused_before_training(tmp_path):
    doms = _domains()
    d = doms["num"]  # 30 test bytes: enough windows (context + 1 = 13), but no 48-byte piece
    doms["num"] = TextDomain("num", d.train, d.val, d.test[:30])
    called = []
    with pytest.raises(MixingError, match=r"domain 'num' has too little test data: 30 bytes.* "
                                          r"= 48"):
        train_mixture(_cfg("uniform", steps=3), tmp_path, domains=doms,
                      progress=lambda *a: called.append(a))
    assert not called and not (tmp_path / "checkpoint.safetensors").exists()


def _garbage(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")


def test_a_foreign_or_corrupt_checkpoint_is_refused(tmp_path):
    from safetensors.numpy import save_file

    doms = _domains()
    _garbage(tmp_path / "a")
    with pytest.raises(MixingError, match="not a gensight mix checkpoint .*delete it or use "
                                          "another --out"):
        train_mixture(_cfg("uniform", steps=3), tmp_path / "a", domains=doms)
    (tmp_path / "b").mkdir()
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "b" / "checkpoint.safetensors"))
    with pytest.raises(MixingError, match="not a gensight mix checkpoint .*no gensight metadata"):
        train_mixture(_cfg("uniform", steps=3), tmp_path / "b", domains=doms)
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "b" / "checkpoint.safetensors"),
              metadata={"gensight": json.dumps({"step": 1})})
    with pytest.raises(MixingError, match="not a gensight mix checkpoint .*lacks config"):
        train_mixture(_cfg("uniform", steps=3), tmp_path / "b", domains=doms)


def test_cli_refuses_a_corrupt_checkpoint_in_one_line(tmp_path, capsys):
    from gensight.cli import main

    out = tmp_path / "run"
    _garbage(out)
    args = ["mix", "train", "--policy", "uniform", "--steps", "2", "--max-bytes", "6000",
            "--domains", "pydoc,arithmetic", "--context", "16", "--d", "16", "--layers", "1",
            "--batch-size", "4", "--quiet", "--no-report", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gensight: error: ") and "not a gensight mix checkpoint" in err[-1]
    assert "internal error" not in "\n".join(err)


def test_resume_needs_the_same_domains_in_order_and_the_log(tmp_path):
    doms = _domains()
    from gensight.mixing.train import _load_checkpoint

    train_mixture(_cfg("uniform", steps=3), tmp_path, domains=doms)
    meta, _ = _load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["domains"] == ["abc", "num", "noise"]
    swapped = {k: doms[k] for k in ("num", "abc", "noise")}  # same data, another order
    with pytest.raises(MixingError, match="written for the domains abc, num, noise"):
        train_mixture(_cfg("uniform", steps=3), tmp_path, domains=swapped)
    (tmp_path / "log.parquet").unlink()
    with pytest.raises(MixingError, match="no log.parquet"):
        train_mixture(_cfg("uniform", steps=3), tmp_path, domains=doms)


@pytest.mark.parametrize("field, value, match", [
    ("heads", 3, "heads \\(3\\) must divide d \\(16\\)"),
    ("seed", -1, "seed must be a non-negative integer"),
    ("steps", True, "steps must be a positive integer"),
    ("weight_decay", -0.1, "weight_decay must be a non-negative number"),
    ("weight_decay", float("nan"), "weight_decay must be a non-negative number"),
    ("max_bytes", 0, "max_bytes must be a positive integer"),
    ("policy_kwargs", {"warmpu": 3}, "policy_kwargs: unknown key\\(s\\) warmpu"),
    ("policy_kwargs", {"warmup": float("nan")}, "policy_kwargs: ADO warmup must be an integer"),
    ("policy_kwargs", {"max_fit_points": 2}, "policy_kwargs: ADO max_fit_points must be"),
])
def test_config_check_names_the_field(field, value, match):
    cfg = _cfg("ado")
    setattr(cfg, field, value)
    with pytest.raises(MixingError, match=match) as info:
        cfg.check()
    assert "\n" not in str(info.value)
    odm = _cfg("odm")
    odm.policy_kwargs = {"smoothing": 0.5}
    odm.check()
    odm.policy_kwargs = {"warmup": 3}
    with pytest.raises(MixingError, match="unknown key\\(s\\) warmup for policy 'odm'"):
        odm.check()


def _result(policy, seed, val, kwargs=None, label=None):
    r = {"config": {"policy": policy, "seed": seed, "steps": 10, "policy_kwargs": kwargs or {}},
         "val": {"a": val, "b": val + 1}, "val_mean": val + 0.5, "test_uniform_mix": val,
         "policy_time_share": 0.01}
    if label:
        r["label"] = label
    return r


def test_summarize_keeps_variants_of_a_policy_apart():
    from gensight.mixing.report import summarize

    results = [_result("ado", 0, 1.0), _result("ado", 1, 1.2),
               _result("ado", 0, 2.0, {"count": "total"}),
               _result("ado", 1, 2.2, {"count": "total"})]
    s = summarize(results).set_index("policy")
    assert list(s.index) == ["ado", "ado (count=total)"]
    assert list(s["seeds"]) == [2, 2]
    assert s.loc["ado", "a"] == pytest.approx(1.1)
    assert s.loc["ado (count=total)", "a"] == pytest.approx(2.1)
    labelled = summarize([_result("ado", 0, 1.0), _result("ado", 0, 3.0, label="ado-total")])
    assert list(labelled["policy"]) == ["ado", "ado-total"]
    longer = _result("ado", 1, 5.0)
    longer["config"]["steps"] = 20
    assert list(summarize([_result("ado", 0, 1.0), longer])["policy"]) == [
        "ado, 10 steps", "ado, 20 steps"]


def test_scaling_figure_labels_the_sample_count(tmp_path, monkeypatch):
    import matplotlib.axes

    from gensight.mixing.report import scaling_figure

    labels = []
    real = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel",
                        lambda self, s, *a, **k: (labels.append(s), real(self, s, *a, **k))[1])
    n = np.arange(1, 41, dtype=float)
    log = pd.DataFrame({"step": np.arange(1, 41), "pi_a": 1.0, "n_a": 6 * n,
                        "train_loss_a": 2 + n ** -0.5, "eps_a": 2.0, "beta_a": 1.0,
                        "alpha_a": 0.5})
    scaling_figure(log, {"steps": 40, "policy_kwargs": {"count": "total"}}, tmp_path / "t.png")
    scaling_figure(log, {"steps": 40, "policy_kwargs": {}}, tmp_path / "d.png")
    assert labels == ["samples seen in total (all domains)", "samples seen from the domain"]


def test_report_uses_the_shared_pyplot():
    from gensight.mixing import report
    from gensight.report import figures

    assert report._pyplot is figures._pyplot
