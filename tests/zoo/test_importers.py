"""Importers: checkpoints + CSV and the Small CNN Zoo format, on tiny files written here."""

import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gensight.cli import main
from gensight.weightspace import WeightBatch
from gensight.zoo import Zoo, verify_zoo
from gensight.zoo.importers import (
    ZooImportError,
    import_checkpoints,
    import_small_cnn_zoo,
    small_cnn_module,
)


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def write_checkpoints(folder, n, suffix=".safetensors", *, extra_csv=None):
    """``n`` small MLP checkpoints and a CSV of their metrics; returns (csv, state dicts)."""
    folder.mkdir(parents=True, exist_ok=True)
    states, rows = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        sd = {k: v.clone() for k, v in mlp(i).state_dict().items()}
        name = f"net{i:02d}{suffix}"
        if suffix == ".safetensors":
            save_file(sd, str(folder / name))
        else:
            torch.save(sd, folder / name)
        states.append(sd)
        acc = float(rng.uniform(0.3, 0.9))
        rows.append({"file": name, "test_acc": acc, "train_acc": acc + 0.05,
                     "lr": [0.01, 0.1][i % 2]})
    csv = folder.parent / f"{folder.name}.csv"
    table = pd.DataFrame(rows[::-1])  # CSV order, not file order, defines the members
    if extra_csv is not None:
        table = extra_csv(table)
    table.to_csv(csv, index=False)
    return csv, states[::-1]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gensight: error: ")
    for frag in fragments:
        assert frag in lines[0], lines[0]


def no_leftovers(parent, out):
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")] == []


# --- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip_is_exact(tmp_path):
    csv, states = write_checkpoints(tmp_path / "ckpts", 6)
    out = tmp_path / "zoo"
    seen = []
    zoo = import_checkpoints(tmp_path / "ckpts", csv, out, shard_size=4,
                             progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 6), (6, 6)]
    assert verify_zoo(out).ok
    zoo = Zoo.open(out)
    assert zoo.notes == [] and zoo.complete and zoo.manifest["n_shards"] == 2
    assert zoo.space.neurons == (5, 7, 3)
    table = zoo.table
    assert table["source"].tolist() == [f"net{i:02d}.safetensors" for i in range(5, -1, -1)]
    assert table["is_final"].all() and table["finite"].all()
    assert table["config_id"].tolist() == list(range(6))
    assert (table["seed_index"] == 0).all()
    assert np.allclose(table["gen_gap"], 0.05)
    assert table["lr"].tolist() == [0.1, 0.01] * 3
    got = zoo.weights(table).to_state_dicts()
    for sd, want in zip(got, states, strict=True):
        assert sd.keys() == want.keys()
        for key in want:
            assert torch.equal(sd[key], want[key]), key
    # a subset, out of order, comes back in the rows' order
    rows = table.iloc[[4, 1]]
    batch = zoo.weights(rows)
    assert batch.allclose(WeightBatch.from_state_dicts(zoo.space, [states[4], states[1]]),
                          rtol=0, atol=0)
    imported = zoo.manifest["imported"]
    assert imported["format"] == "checkpoints" and imported["placeholder_spec"] is True
    assert imported["source"]["csv"] == str(csv.resolve())


def test_pt_checkpoints_via_weights_only_and_cli_info(tmp_path, capsys):
    csv, states = write_checkpoints(tmp_path / "ckpts", 4, suffix=".pt")
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "import", "checkpoints", tmp_path / "ckpts", "--csv", csv,
                            "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert "imported 4 networks" in err
    zoo = Zoo.open(out)
    for sd, want in zip(zoo.weights().to_state_dicts(), states, strict=True):
        assert all(torch.equal(sd[k], want[k]) for k in want)
    code, out_text, err = run_cli(["zoo", "info", out], capsys)
    assert code == 0, err
    assert "imported (checkpoints)" in out_text and "complete, verified" in out_text
    code, out_text, _ = run_cli(["zoo", "verify", out], capsys)
    assert code == 0 and out_text.strip().endswith("ok")


def test_predict_statnn_runs_on_an_imported_zoo(tmp_path, capsys):
    csv, _ = write_checkpoints(tmp_path / "ckpts", 12)
    out = tmp_path / "zoo"
    import_checkpoints(tmp_path / "ckpts", csv, out)
    code, text, err = run_cli(["predict", out, "--methods", "statnn", "--split", "config",
                               "--out", tmp_path / "pred"], capsys)
    assert code == 0, err
    scores = pd.read_csv(tmp_path / "pred" / "scores.csv")
    assert len(scores) == 1 and "statnn" in scores.iloc[0].to_string()
    assert len(pd.read_csv(tmp_path / "pred" / "predictions.csv")) == 3  # 25% of 12
    # work that needs the members' training data is refused in one line, not run on the
    # stand-in spec's dataset
    for args in (["measures", out, "--measures", "param.norm", "--quiet"],
                 ["predict", out, "--methods", "margin-signature", "--split", "config"]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "was imported (checkpoints)" in err and "training data" in err


def named_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), act=nn.Tanh(), fc2=nn.Linear(6, 2)))


def test_template_module_describes_non_sequential_keys(tmp_path, capsys):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    states = []
    for i in range(3):
        sd = named_mlp(i).state_dict()
        save_file(dict(sd), str(folder / f"m{i}.safetensors"))
        states.append(sd)
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": [f"m{i}.safetensors" for i in range(3)],
                  "test_acc": [0.5, 0.6, 0.7]}).to_csv(csv, index=False)
    # without a template: the keys say nothing about the architecture
    with pytest.raises(ZooImportError, match=r"key 'fc1\.(weight|bias)'.*--template"):
        import_checkpoints(folder, csv, tmp_path / "a", file_column="path")
    zoo = import_checkpoints(folder, csv, tmp_path / "b", file_column="path",
                             architecture=named_mlp())
    for sd, want in zip(zoo.weights().to_state_dicts(), states, strict=True):
        assert all(torch.equal(sd[k], want[k]) for k in want)
    template = tmp_path / "arch.py"
    template.write_text("from torch import nn\nfrom collections import OrderedDict\n"
                        "def make():\n    return nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), "
                        "act=nn.Tanh(), fc2=nn.Linear(6, 2)))\n")
    code, _, err = run_cli(["zoo", "import", "checkpoints", folder, "--csv", csv,
                            "--file-column", "path", "--template", f"{template}:make",
                            "--out", tmp_path / "c", "--quiet"], capsys)
    assert code == 0, err
    assert Zoo.open(tmp_path / "c").space == zoo.space


def test_cnn_checkpoints_are_inferred(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    nets = []
    for i in range(2):
        torch.manual_seed(i)
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3, bias=False),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        save_file(dict(net.state_dict()), str(folder / f"c{i}.safetensors"))
        nets.append(net)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"file": ["c0.safetensors", "c1.safetensors"],
                  "test_acc": [0.1, 0.2]}).to_csv(csv, index=False)
    zoo = import_checkpoints(folder, csv, tmp_path / "zoo")
    space = zoo.space
    assert [layer.kind for layer in space.layers] == ["conv2d", "conv2d", "linear"]
    assert space.layers[1].bias_key is None and space.neurons == (1, 3, 4, 10)
    assert zoo.family == "cnn" and verify_zoo(tmp_path / "zoo").ok
    x = torch.randn(2, 1, 9, 9)
    for net, got in zip(nets, zoo.weights().to_modules(nets[0]), strict=True):
        assert torch.equal(net(x), got(x))


@pytest.mark.parametrize("case, fragments", [
    ("missing file", ["row 3 names 'ghost.safetensors'", "not a checkpoint in"]),
    ("extra checkpoint", ["net05.safetensors", "has no row in CSV"]),
    ("duplicate row", ["names 'net01.safetensors' a second time"]),
    ("shape mismatch", ["net03.safetensors", "key '0.weight' has shape (8, 5)",
                        "expected (7, 5)"]),
    ("missing key", ["net02.safetensors", "missing key '2.bias'"]),
    ("nan", ["net04.safetensors", "key '0.weight' holds NaN"]),
    ("not weights-only", ["net03.pt", "refused: it is not a weights-only checkpoint"]),
    ("reserved column", ["column(s) ['shard']"]),
])
def test_import_errors_are_one_line_and_leave_nothing(tmp_path, capsys, case, fragments):
    folder = tmp_path / "ckpts"

    def edit(table):
        if case == "missing file":
            table.loc[1, "file"] = "ghost.safetensors"
        elif case == "duplicate row":
            table.loc[0, "file"] = "net01.safetensors"
        elif case == "reserved column":
            table["shard"] = 1
        return table

    csv, _ = write_checkpoints(folder, 6, extra_csv=edit)
    if case == "extra checkpoint":
        table = pd.read_csv(csv)
        table[table["file"] != "net05.safetensors"].to_csv(csv, index=False)
    elif case == "shape mismatch":
        torch.manual_seed(0)
        bad = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict()
        save_file(dict(bad), str(folder / "net03.safetensors"))
    elif case == "missing key":
        sd = dict(mlp(2).state_dict())
        del sd["2.bias"]
        save_file(sd, str(folder / "net02.safetensors"))
    elif case == "nan":
        sd = dict(mlp(4).state_dict())
        sd["0.weight"][1, 2] = float("nan")
        save_file(sd, str(folder / "net04.safetensors"))
    elif case == "not weights-only":
        (folder / "net03.safetensors").unlink()
        torch.save({"0.weight": torch.zeros(7, 5), "payload": Exploit()}, folder / "net03.pt")
        table = pd.read_csv(csv)
        table.loc[table["file"] == "net03.safetensors", "file"] = "net03.pt"
        table.to_csv(csv, index=False)
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "import", "checkpoints", folder, "--csv", csv, "--out", out,
                            "--shard-size", "2", "--quiet"], capsys)
    assert_one_line_error(code, err, *fragments)
    no_leftovers(tmp_path, out)
    if case == "not weights-only":
        assert not Exploit.ran


class Exploit:
    """A pickle payload that would run code if the file were fully unpickled."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    Exploit.ran = True
    return "ran"


def test_existing_out_is_refused(tmp_path, capsys):
    csv, _ = write_checkpoints(tmp_path / "ckpts", 2)
    out = tmp_path / "zoo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["zoo", "import", "checkpoints", tmp_path / "ckpts", "--csv", csv,
                            "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# --- the Small CNN Zoo ------------------------------------------------------------------------
CONV = [(1, 4), (4, 4), (4, 4)]  # (in, out) channels of the 3x3 convs; dense 4 -> 10


def tf_variables():
    """The layout of the zoo's TF (Keras) variables: name and shape, in matrix order."""
    out = []
    for i, (c_in, c_out) in enumerate(CONV):
        name = "sequential/conv2d" + (f"_{i}" if i else "")
        out += [(f"{name}/kernel:0", (3, 3, c_in, c_out)), (f"{name}/bias:0", (c_out,))]
    out += [("sequential/dense/kernel:0", (CONV[-1][1], 10)), ("sequential/dense/bias:0", (10,))]
    return out


def write_small_cnn_zoo(folder, n_nets=3, steps=(0, 100, 200), *, edit=None):
    """weights.npy, layout.csv and metrics.csv.gz as the dataset ships them (rows: network x
    checkpoint); returns the paths and the TF variables of every row."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    variables = tf_variables()
    layout, start = [], 0
    for name, shape in variables:
        size = int(np.prod(shape))
        layout.append({"varname": name, "start_idx": start, "end_idx": start + size,
                       "size": size, "shape": str(shape)})
        start += size
    rows, metrics, params = [], [], []
    for net in range(n_nets):
        for step in steps:
            tensors = {name: rng.normal(0, 0.5, shape).astype(np.float32)
                       for name, shape in variables}
            params.append(tensors)
            rows.append(np.concatenate([tensors[name].ravel() for name, _ in variables]))
            acc = 0.1 + 0.1 * net + step / 1000
            metrics.append({"config.activation": "relu", "config.optimizer": "adam",
                            "config.learning_rate": 0.001 * (net + 1), "config.dropout": 0.0,
                            "modeldir": f"/tmp/runs/{net}", "step": step,
                            "test_accuracy": acc, "train_accuracy": acc + 0.02,
                            "test_loss": 1.0, "train_loss": 0.9})
    weights = np.stack(rows)
    layout_df, metrics_df = pd.DataFrame(layout), pd.DataFrame(metrics)
    if edit is not None:
        weights, layout_df, metrics_df = edit(weights, layout_df, metrics_df)
    paths = folder / "weights.npy", folder / "layout.csv", folder / "metrics.csv.gz"
    np.save(paths[0], weights)
    layout_df.to_csv(paths[1], index=False)
    metrics_df.to_csv(paths[2], index=False)
    return paths, params


def tf_forward(x_nhwc: np.ndarray, tensors: dict) -> np.ndarray:
    """The TF network on NHWC inputs, written directly in TF's layouts (HWIO kernels, 'same'
    zero padding, stride 1, ReLU, global average pooling, x @ kernel + bias): no torch."""
    h = x_nhwc.astype(np.float64)
    for i in range(len(CONV)):
        name = "sequential/conv2d" + (f"_{i}" if i else "")
        kernel, bias = tensors[f"{name}/kernel:0"], tensors[f"{name}/bias:0"]
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        n, height, width, _ = h.shape
        out = np.zeros((n, height, width, kernel.shape[3]))
        for dy in range(3):
            for dx in range(3):
                patch = padded[:, dy:dy + height, dx:dx + width, :]
                out += np.einsum("nhwc,co->nhwo", patch, kernel[dy, dx])
        h = np.maximum(out + bias, 0)
    pooled = h.mean(axis=(1, 2))
    return pooled @ tensors["sequential/dense/kernel:0"] + tensors["sequential/dense/bias:0"]


def test_small_cnn_zoo_layout_conversion_computes_the_same_function(tmp_path):
    (w, layout, metrics), params = write_small_cnn_zoo(tmp_path / "src")
    out = tmp_path / "zoo"
    zoo = import_small_cnn_zoo(w, layout, metrics, out, shard_size=2)
    assert verify_zoo(out).ok
    table = zoo.table
    # the final checkpoint (step 200) of each of the 3 networks: matrix rows 2, 5, 8
    assert table["npy_row"].tolist() == [2, 5, 8]
    assert table["source"].tolist() == [f"/tmp/runs/{i}" for i in range(3)]
    assert table["step"].tolist() == [200] * 3
    assert np.allclose(table["test_acc"], [0.3, 0.4, 0.5])
    assert np.allclose(table["gen_gap"], 0.02)
    assert table["optimizer"].tolist() == ["adam"] * 3
    assert np.allclose(table["learning_rate"], [0.001, 0.002, 0.003])
    assert zoo.space.neurons == (1, 4, 4, 4, 10)
    assert zoo.family == "cnn"
    x = np.random.default_rng(2).normal(size=(5, 7, 6, 1)).astype(np.float32)  # NHWC
    template = small_cnn_module(zoo.space, "relu", stride=1, padding=1)
    nets = zoo.weights(table).to_modules(template)
    for net, row in zip(nets, table["npy_row"], strict=True):
        want = tf_forward(x, params[row])
        with torch.no_grad():
            got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
        assert np.abs(got - want).max() < 1e-5
    # and the stored conv weight is the transposed kernel, element for element
    first = zoo.weights(table.iloc[[0]]).to_state_dicts()[0]
    kernel = params[2]["sequential/conv2d_1/kernel:0"]
    assert torch.equal(first["2.weight"], torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    assert torch.equal(first["8.weight"],
                       torch.from_numpy(params[2]["sequential/dense/kernel:0"].T.copy()))
    variables = zoo.manifest["imported"]["variables"]
    assert variables["0.weight"]["tf_name"] == "sequential/conv2d/kernel:0"


def test_small_cnn_zoo_cli_and_step_selection(tmp_path, capsys):
    (w, layout, metrics), params = write_small_cnn_zoo(tmp_path / "src")
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "import", "small-cnn-zoo", "--weights", w, "--layout", layout,
                            "--metrics", metrics, "--checkpoint", "100", "--out", out,
                            "--quiet"], capsys)
    assert code == 0, err
    zoo = Zoo.open(out)
    assert zoo.table["npy_row"].tolist() == [1, 4, 7]
    sd = zoo.weights(zoo.table.iloc[[2]]).to_state_dicts()[0]
    assert torch.equal(sd["8.bias"], torch.from_numpy(params[7]["sequential/dense/bias:0"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["imported"]["format"] == "small-cnn-zoo"
    assert manifest["imported"]["checkpoint"] == 100


def _nan_row(weights, layout, metrics):
    weights[5, 3] = np.nan
    return weights, layout, metrics


def _short_metrics(weights, layout, metrics):
    return weights, layout, metrics.iloc[:-1]


def _gap_in_layout(weights, layout, metrics):
    layout.loc[1, "start_idx"] += 1
    layout.loc[1, "end_idx"] += 1
    return weights, layout, metrics


def _bad_size(weights, layout, metrics):
    layout.loc[1, "end_idx"] += 1
    return weights, layout, metrics


def _renamed_layout(weights, layout, metrics):
    return weights, layout.rename(columns={"varname": "name"}), metrics


@pytest.mark.parametrize("edit, fragments", [
    (_nan_row, ["row 5 (/tmp/runs/1) holds NaN"]),
    (_short_metrics, ["has 8 rows; the weight matrix has 9"]),
    (_gap_in_layout, ["'sequential/conv2d/bias:0' starts at column 37, expected 36"]),
    (_bad_size, ["'sequential/conv2d/bias:0'", "shape '(4,)' has 4 values but columns 36:41 "
                 "hold 5"]),
    (_renamed_layout, ["lacks the column(s) ['varname']"]),
])
def test_small_cnn_zoo_errors(tmp_path, capsys, edit, fragments):
    (w, layout, metrics), _ = write_small_cnn_zoo(tmp_path / "src", edit=edit)
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "import", "small-cnn-zoo", "--weights", w, "--layout", layout,
                            "--metrics", metrics, "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, *fragments)
    no_leftovers(tmp_path, out)


def test_small_cnn_zoo_custom_layout_columns(tmp_path, capsys):
    (w, layout, metrics), _ = write_small_cnn_zoo(tmp_path / "src", edit=_renamed_layout)
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "import", "small-cnn-zoo", "--weights", w, "--layout", layout,
                            "--metrics", metrics, "--layout-columns",
                            "name,shape,start_idx,end_idx", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert len(Zoo.open(out).table) == 3


def test_object_array_is_refused(tmp_path, capsys):
    (w, layout, metrics), _ = write_small_cnn_zoo(tmp_path / "src")
    np.save(w, np.array([{"a": 1}] * 9, dtype=object), allow_pickle=True)
    code, _, err = run_cli(["zoo", "import", "small-cnn-zoo", "--weights", w, "--layout", layout,
                            "--metrics", metrics, "--out", tmp_path / "zoo", "--quiet"], capsys)
    assert_one_line_error(code, err, "refused: not a plain NumPy array file")
