"""``gensight merge`` end to end on a tiny zoo and on tiny checkpoints."""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gensight.cli import main
from gensight.merge import RecurrentClassifier

torch.set_num_threads(1)


def _save(module: nn.Module, path) -> str:
    save_file({k: v.detach().contiguous() for k, v in module.named_parameters()}, str(path))
    return str(path)


def test_merge_zoo_writes_weights_tables_and_page(grid_zoo, tmp_path, capsys):
    out = tmp_path / "merge"
    rc = main(["merge", str(grid_zoo.root), "--members", "3", "--joint-steps", "20",
               "--points", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "fleet-merge" in printed and "loss barrier, after alignment" in printed
    acc = pd.read_csv(out / "accuracy.csv")
    assert list(acc.columns) == ["task", "member alone", "fleet-merge", "naive average",
                                 "ensemble", "joint training"]
    assert len(acc) == 4 and acc["task"].iloc[-1] == "mean"
    barrier = pd.read_csv(out / "barrier.csv")
    assert set(barrier["path"]) == {"before alignment", "after alignment"}
    assert len(barrier) == 6
    merged = load_file(out / "merged.safetensors")
    assert set(merged) == set(grid_zoo.space.state_dict_keys())
    assert main(["merge", str(grid_zoo.root), "--query", "no_such_column > 1",
                 "--out", str(out)]) == 2
    assert "--query 'no_such_column > 1' failed" in capsys.readouterr().err
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and "joint training" in page


def test_merge_checkpoints_of_identical_grus_returns_the_network(tmp_path):
    torch.manual_seed(0)
    net = RecurrentClassifier(8, 5, 10, "gru")
    paths = [_save(net, tmp_path / f"g{i}.safetensors") for i in range(2)]
    rc = main(["merge", *paths, "--tasks", "0,1,2;3,4", "--joint-steps", "0", "--points", "2",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    merged = load_file(tmp_path / "out" / "merged.safetensors")
    for key, value in net.named_parameters():
        assert torch.allclose(merged[key], value.detach(), atol=1e-7)
    acc = pd.read_csv(tmp_path / "out" / "accuracy.csv")
    assert "joint training" not in acc.columns
    assert list(acc["task"]) == ["labels 0,1,2", "labels 3,4", "mean"]


def test_merge_refuses_bad_input_by_name(tmp_path, capsys):
    torch.manual_seed(1)
    a = _save(nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)),
              tmp_path / "a.safetensors")
    b = _save(nn.Sequential(nn.Flatten(), nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 10)),
              tmp_path / "b.safetensors")
    nan = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10))
    with torch.no_grad():
        nan[3].weight[0, 0] = float("nan")
    c = _save(nan, tmp_path / "c.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        ([a, b], f"network 1 ({tmp_path / 'b.safetensors'}) has another architecture"),
        ([a, c], "parameter '3.weight' contains NaN"),
        ([a, str(junk)], "junk.safetensors' is not a safetensors checkpoint"),
        ([a], "at least 2 checkpoint files"),
        ([a, a, "--method", "cosine"], "--method must be 'weight' or 'activation'"),
        ([a, a, "--tasks", "0,1;x"], "--tasks must be label lists"),
        ([a, a, "--tasks", "0,1"], "--tasks names 1 label subsets for 2 networks"),
        ([a, a, "--reference", "mid"], "--reference must be a member index or 'average'"),
        ([a, a, "--dataset", "mnist1d"], "the networks do not take mnist1d inputs of shape"),
        ([a, a, "--tasks", "0,1;2,12"], "label subset [2, 12] is empty or has labels outside"),
    ]
    for argv, message in cases:
        assert main(["merge", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "merged.safetensors").exists()


@pytest.mark.parametrize("weights,message", [("1,2,3", "weights has 3 entries"),
                                             ("1,a", "--weights must be comma-separated")])
def test_merge_refuses_bad_weights(tmp_path, capsys, weights, message):
    torch.manual_seed(2)
    a = _save(nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10)),
              tmp_path / "a.safetensors")
    assert main(["merge", a, a, "--weights", weights, "--joint-steps", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def _gru_state(**changes):
    torch.manual_seed(3)
    state = {k: v.detach().contiguous()
             for k, v in RecurrentClassifier(8, 5, 10, "gru").named_parameters()}
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("changes,message", [
    ({"rnn__weight_ih_l0": None}, "has rnn.weight_hh_l0 but no 'rnn.weight_ih_l0'"),
    ({"readout__weight": None}, "has rnn.weight_hh_l0 but no 'readout.weight'"),
    ({"rnn__weight_hh_l0": torch.zeros(15)}, "'rnn.weight_hh_l0' has shape (15,)"),
    ({"rnn__weight_hh_l0": torch.zeros(0, 0)}, "'rnn.weight_hh_l0' has shape (0, 0)"),
    ({"rnn__weight_ih_l0": torch.zeros(15)}, "'rnn.weight_ih_l0' has shape (15,)"),
    ({"rnn__weight_hh_l0": torch.zeros(10, 5)}, "is neither a GRU's (3 gates) nor an LSTM's"),
])
def test_merge_refuses_malformed_recurrent_checkpoints(tmp_path, capsys, changes, message):
    good = _save(RecurrentClassifier(8, 5, 10, "gru"), tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_file(_gru_state(**changes), str(bad))
    assert main(["merge", good, str(bad), "--joint-steps", "0", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.safetensors" in err, err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_activations_are_the_zoo_activations(monkeypatch):
    # one table of activations (gensight.zoo.train), not a copy that can drift from it
    from gensight.merge.cli import module_from_state
    from gensight.zoo import train

    monkeypatch.setitem(train._ACT_MODULES, "mish", nn.Mish)
    state = {k: v.detach() for k, v in nn.Sequential(
        nn.Flatten(), nn.Linear(4, 6), nn.Mish(), nn.Linear(6, 3)).named_parameters()}
    net = module_from_state(state, "mish", "x")
    assert any(isinstance(m, nn.Mish) for m in net.modules())
