"""``gensight lopt train|eval``: error paths (one line, exit 2, no traceback) and the report."""

import json

import pytest

import gensight.cli as gcli


@pytest.fixture
def run(capsys):
    def call(*argv):
        rc = gcli.main(list(argv))
        out = capsys.readouterr()
        return rc, out.out, out.err

    return call


TINY = ["--population", "2", "--unroll", "2", "--horizon", "4", "--hidden", "4", "--quiet"]


@pytest.mark.parametrize("argv,match", [
    (["--f", "lstm"], "--f: unknown learned optimizer 'lstm'"),
    (["--task", "cifar"], "--task: unknown task 'cifar'"),
    (["--estimator", "reinforce"], "--estimator: unknown estimator 'reinforce'"),
    (["--estimator", "es", "--population", "3"], "--population must be even"),
    (["--objective", "median"], "--objective: unknown meta-objective 'median'"),
    (["--features", "adam"], "--features must be 'ours' or 'paper'; got 'adam'"),
    (["--meta-steps", "0"], "--meta-steps must be a positive integer; got '0'"),
    (["--unroll", "x"], "--unroll must be a positive integer; got 'x'"),
    (["--horizon", "7", "--unroll", "2"], "--horizon \\(7\\) must be a multiple of --unroll"),
    (["--meta-lr", "-1"], "--meta-lr must be a positive number; got '-1'"),
    (["--symmetry", "full"], "--symmetry must be 'np' or 'hnp'"),
    (["--f", "nfn", "--task", "python-rnn"], "f='nfn' needs an MLP/CNN optimizee"),
    (["--backbone", "gnn"], "--backbone must be one of own, deepsets; got 'gnn'"),
    (["--f", "mlp", "--backbone", "deepsets"],
     "--backbone deepsets needs --f nfn or unf and --layers >= 2; got --f mlp --layers 3"),
    (["--f", "unf", "--backbone", "deepsets", "--layers", "1"], "got --f unf --layers 1"),
])
def test_train_errors(run, tmp_path, argv, match):
    rc, _, err = run("lopt", "train", "--out", str(tmp_path / "o"), *argv)
    assert rc == 2
    assert err.startswith("gensight: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err), err


def test_eval_errors(run, tmp_path):
    rc, _, err = run("lopt", "eval", str(tmp_path / "missing"))
    assert rc == 2 and "does not exist" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    rc, _, err = run("lopt", "eval", str(bad))
    assert rc == 2 and "is not a readable safetensors checkpoint" in err
    rc, _, err = run("lopt", "eval", str(bad), "--task", "nope")
    assert rc == 2 and "--task: unknown task 'nope'" in err


def test_train_resume_refuses_other_settings(run, tmp_path):
    out = str(tmp_path / "run")
    rc, _, _ = run("lopt", "train", "--out", out, "--meta-steps", "1", "--f", "mlp", *TINY)
    assert rc == 0
    rc, _, err = run("lopt", "train", "--out", out, "--meta-steps", "2", "--f", "mlp",
                     "--seed", "4", *TINY)
    assert rc == 2 and "written with seed=0, not 4" in err


def test_train_final_objective_reports_steps_without_signal(run, tmp_path):
    """TINY staggers its two runs at 0 and 2 steps of a 4-step horizon: the first meta-step
    ends only the staggered (short) episode, so there is nothing to learn from yet."""
    out = str(tmp_path / "run")
    rc, stdout, err = run("lopt", "train", "--out", out, "--meta-steps", "1", "--f", "mlp",
                          "--objective", "final", *TINY)
    assert rc == 0, err
    assert "objective final" in err
    assert "meta-loss (last 0 with signal, objective final) nan" in stdout
    rc, stdout, err = run("lopt", "train", "--out", out, "--meta-steps", "2", "--f", "mlp",
                          "--objective", "final", *TINY)
    assert rc == 0 and "resuming from" in err
    assert "(last 1 with signal, objective final)" in stdout


def test_train_then_eval_writes_report(run, tmp_path):
    out = tmp_path / "unf"
    rc, stdout, err = run("lopt", "train", "--out", str(out), "--meta-steps", "2", *TINY)
    assert rc == 0, err
    assert "meta-step 2" in stdout
    rc, _, err = run("lopt", "train", "--out", str(out), "--meta-steps", "3", *TINY)
    assert rc == 0 and "resuming from" in err
    page = tmp_path / "r.html"
    rc, stdout, err = run("lopt", "eval", str(out), "--steps", "4", "--seeds", "2",
                          "--tune-seeds", "1", "--lr-grid", "0.1", "--out", str(page),
                          "--quiet")
    assert rc == 0, err
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1
    summary = json.loads(page.with_suffix(".json").read_text())
    names = [r["optimizer"] for r in summary["digits-mlp"]]
    assert names == ["unf: unf", "adam (lr 0.1)", "sgdm (lr 0.1)"]
    assert all(0 <= r["test_acc"] <= 1 and r["train_loss"] > 0 for r in summary["digits-mlp"])


def test_eval_argument_errors_come_before_any_work(run, tmp_path):
    missing = str(tmp_path / "missing")
    rc, _, err = run("lopt", "eval", missing, "--lr-grid", ",")
    assert rc == 2 and "--lr-grid needs at least one learning rate; got ','" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = run("lopt", "eval", missing, "--out", str(tmp_path / "r.json"))
    assert rc == 2 and "ends in .json; name the HTML page" in err
    rc, _, err = run("lopt", "eval", missing, "--out", str(tmp_path))
    assert rc == 2 and "is a directory" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = run("lopt", "train", "--out", str(afile), "--meta-steps", "1", *TINY)
    assert rc == 2 and "is an existing file; it must name a run directory" in err
    assert afile.read_text() == "x"


def test_eval_checks_every_task_checkpoint_pair_before_training(run, tmp_path, monkeypatch):
    import gensight.lopt.evaluate as ev

    out = tmp_path / "unf"
    rc, _, err = run("lopt", "train", "--out", str(out), "--meta-steps", "1", *TINY)
    assert rc == 0, err
    calls = []
    monkeypatch.setattr(ev, "compare", lambda *a, **k: calls.append(a) or [])
    rc, _, err = run("lopt", "eval", str(out), "--task", "digits-mlp,digits-cnn", "--steps",
                     "2", "--seeds", "1", "--out", str(tmp_path / "r.html"), "--quiet")
    assert rc == 2 and "task 'digits-cnn'" in err and "differs in depth or layer kinds" in err
    assert len(err.strip().splitlines()) == 1
    assert calls == []  # nothing was trained
