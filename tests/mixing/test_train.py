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

    code = ("import sys, gensight.mixing, gensight.mixing.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
