import numpy as np
import pandas as pd
import pytest

from gensight.cli import main
from gensight.data import load_dataset
from gensight.estimate import METHODS


def test_estimate_cli_on_a_zoo(grid_zoo, tmp_path, capsys):
    out = tmp_path / "est"
    assert main(["estimate", str(grid_zoo.root), "--shift", "gaussian_noise:4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mean absolute error" in text and "ALine-D" in text
    table = pd.read_csv(out / "estimates-gaussian_noise-4.csv")
    final = grid_zoo.table.query("is_final and finite").set_index("member_id")
    assert len(table) == len(final)
    # the true accuracy reported is the zoo's own record of the shifted test set (up to an
    # example or two whose top logits tie after float16 storage: 360 test examples)
    np.testing.assert_allclose(table.set_index("model")["true_acc"],
                               final.loc[table.model, "shift:gaussian_noise-4_acc"],
                               atol=2.5 / 360)
    assert set(METHODS) <= set(table.columns)
    mae = pd.read_csv(out / "mae-gaussian_noise-4.csv", index_col="method")["mae"]
    common = table[list(METHODS)].notna().all(axis=1)
    assert mae["AC"] == pytest.approx(
        (table.loc[common, "AC"] - table.loc[common, "true_acc"]).abs().mean())
    png = (out / "aline-gaussian_noise-4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_estimate_cli_all_severities_and_errors(grid_zoo, tmp_path, capsys):
    assert main(["estimate", str(grid_zoo.root), "--shift", "gaussian_noise", "--methods",
                 "AC,GDE", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("estimates-*.csv")} == {
        "estimates-gaussian_noise-2.csv", "estimates-gaussian_noise-4.csv"}
    assert main(["estimate", str(grid_zoo.root), "--shift", "fog:3"]) == 2
    assert "no shifted set 'fog:3'; it has gaussian_noise-2, gaussian_noise-4" in \
        capsys.readouterr().err
    assert main(["estimate", str(grid_zoo.root), "--shift", "gaussian_noise",
                 "--methods", "AC,oracle"]) == 2
    assert "unknown estimator(s) ['oracle']" in capsys.readouterr().err


def test_estimate_cli_from_logits_files(grid_zoo, tmp_path, capsys):
    rows = grid_zoo.table.query("is_final").head(5)
    data = load_dataset("digits")
    np.save(tmp_path / "src.npy", grid_zoo.logits(rows, "val").numpy())
    np.save(tmp_path / "tgt.npy", grid_zoo.logits(rows, "gaussian_noise-2").numpy())
    np.save(tmp_path / "y.npy", data.y_val.numpy())
    np.save(tmp_path / "yt.npy", data.y_test.numpy())
    assert main(["estimate", "--source-logits", str(tmp_path / "src.npy"), "--source-labels",
                 str(tmp_path / "y.npy"), "--target-logits", str(tmp_path / "tgt.npy"),
                 "--target-labels", str(tmp_path / "yt.npy"), "--out", str(tmp_path / "o")]) == 0
    table = pd.read_csv(tmp_path / "o" / "estimates-target.csv")
    assert list(table.model) == [f"model-{i}" for i in range(5)]
    assert "GDE" not in table.columns and "ALine-D" in table.columns
    np.testing.assert_allclose(table.true_acc, rows["shift:gaussian_noise-2_acc"],
                               atol=2.5 / 360)
    assert main(["estimate", "--source-logits", str(tmp_path / "src.npy")]) == 2
    assert "missing: --source-labels, --target-logits" in capsys.readouterr().err
    np.save(tmp_path / "y_bad.npy", data.y_val.numpy()[:10])
    assert main(["estimate", "--source-logits", str(tmp_path / "src.npy"), "--source-labels",
                 str(tmp_path / "y_bad.npy"), "--target-logits", str(tmp_path / "tgt.npy")]) == 2
    assert "one label per example" in capsys.readouterr().err


def test_estimate_cli_prints_every_method_name_in_full(grid_zoo, tmp_path, capsys,
                                                        monkeypatch):
    for columns in ("80", "60"):
        monkeypatch.setenv("COLUMNS", columns)
        assert main(["estimate", str(grid_zoo.root), "--shift", "gaussian_noise:4",
                     "--out", str(tmp_path)]) == 0
        text = capsys.readouterr().out
        assert "…" not in text   # rich cut "ATC-MC+TS" to "ATC…" in 80 columns
        for method in METHODS:
            assert f" {method} " in text, (method, text)
        assert max(len(line) for line in text.splitlines()) <= int(columns)


def _write_logits(tmp_path, src, tgt, y, yt):
    np.save(tmp_path / "src.npy", src)
    np.save(tmp_path / "tgt.npy", tgt)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "yt.npy", yt)
    return ["--source-logits", str(tmp_path / "src.npy"), "--source-labels",
            str(tmp_path / "y.npy"), "--target-logits", str(tmp_path / "tgt.npy"),
            "--target-labels", str(tmp_path / "yt.npy")]


def test_estimate_cli_partners_name_the_seeds_of_each_configuration(tmp_path, capsys):
    import json

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    src = np.stack([np.eye(4)[y] * 2 + rng.normal(size=(200, 4)) for _ in range(5)])
    tgt = np.stack([np.eye(4)[y] + rng.normal(size=(200, 4)) for _ in range(5)])
    files = _write_logits(tmp_path, src, tgt, y, y)
    groups = [["model-0", "model-1", "model-2"], ["model-3", "model-4"]]
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    pred = tgt.argmax(-1)
    want = [np.mean([np.mean(pred[i] == pred[j]) for j in g if j != i])
            for g in ([0, 1, 2], [3, 4]) for i in g]
    for spec in ("model-0,model-1,model-2;model-3,model-4", str(tmp_path / "groups.json")):
        assert main(["estimate", *files, "--partners", spec, "--out", str(tmp_path / "o")]) == 0
        table = pd.read_csv(tmp_path / "o" / "estimates-target.csv")
        np.testing.assert_allclose(table["GDE"], want, atol=1e-12)
        assert "CBPE" in table.columns
    capsys.readouterr()
    for spec, message in (("model-0,model-9", "names 'model-9', which is not a model"),
                          ("model-0,model-1;model-1,model-2", "'model-1' in two groups")):
        assert main(["estimate", *files, "--partners", spec]) == 2
        assert message in capsys.readouterr().err
    assert main(["estimate", *files, "--methods", "AC,GDE"]) == 2
    assert "name them with --partners" in capsys.readouterr().err


def test_estimate_cli_r2_note_names_both_aline_variants(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    src = np.stack([np.eye(4)[y] * (1 + i / 2) + rng.normal(size=(200, 4)) for i in range(5)])
    tgt = rng.normal(size=src.shape)   # random predictions: agreement is not on a line
    files = _write_logits(tmp_path, src, tgt, y, y)
    assert main(["estimate", *files, "--methods", "ALine-D", "--out", str(tmp_path / "o")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "agreement is not on a line" in text and "ALine-S and ALine-D estimates" in text


def test_estimate_help_lists_every_method(capsys):
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for method in METHODS:
        assert method in text
    assert "--partners" in text
