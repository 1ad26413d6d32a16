"""GRU and residual-CNN zoos (issue #16): the arith task, batched training equal to the
per-network loop, the ParamSpace store, and the predictors that read it."""

import json

import pytest
import torch
import torch.nn.functional as F

from gensight.data import load_dataset
from gensight.data.arith import IGNORE, LENGTH, VOCAB, decode, question
from gensight.nf import unf
from gensight.weightspace import ParamBatch, ParamSpace, space_from_dict
from gensight.zoo import ZooSpec
from gensight.zoo.build import build_zoo
from gensight.zoo.families import (
    CharGRU,
    ParamEvaluation,
    build_template,
    evaluate_params,
    gru_logits,
    init_member_params,
    member_module,
    population_logits,
    train_param_population,
    train_param_reference,
)
from gensight.zoo.spec import SpecError
from gensight.zoo.store import ZooStoreError, verify_zoo


def _gru_spec(**kw):
    data = {"dataset": "arith", "configs": 3, "architecture": {"family": "gru", "hidden": [8]},
            "hparams": {"lr": {"low": 0.005, "high": 0.02}, "optimizer": ["adam"],
                        "l2": [0.0, 1e-3], "init_scale": [0.7, 1.3], "epochs": [2],
                        "batch_size": [64], "train_fraction": [0.3]}}
    data.update(kw)
    return ZooSpec.from_dict(data)


def _res_spec(**kw):
    data = {"dataset": "digits", "configs": 3,
            "architecture": {"family": "rescnn", "channels": 4, "blocks": 2},
            "hparams": {"lr": {"low": 0.02, "high": 0.05}, "optimizer": ["sgd"],
                        "momentum": [0.0, 0.9], "l2": [0.0, 1e-3], "epochs": [2],
                        "batch_size": [50], "train_fraction": [0.3]}}
    data.update(kw)
    return ZooSpec.from_dict(data)


# --- the task ------------------------------------------------------------------------------

def test_arith_question_golden():
    x, y = question(57, 8)
    assert decode(x) == "57+8=65."
    # targets: only the answer "65" and the end mark "." are scored
    assert [VOCAB[t] if t != IGNORE else None for t in y] == \
        [None, None, None, None, "6", "5", ".", None]
    x, y = question(99, 9)
    assert decode(x) == "99+9=108" and len(x) == LENGTH
    assert [VOCAB[t] for t in y[4:]] == ["1", "0", "8", "."]


def test_arith_split_is_fixed_and_disjoint():
    ds = load_dataset("arith")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (600, 200, 200)
    texts = [decode(x) for part in (ds.x_train, ds.x_val, ds.x_test) for x in part]
    assert len(set(texts)) == 1000  # every question once
    assert ds.n_classes == len(VOCAB) and ds.input_shape == (LENGTH,)


def test_success_rate_counts_exact_answers_only():
    ds = load_dataset("arith")
    x, y = ds.x_test[:4], ds.y_test[:4]
    logits = F.one_hot(y.clamp_min(0), len(VOCAB)).float()[None] * 5.0  # all correct
    logits[0, 1, 4] = 0.0                 # example 1: break one scored position ...
    logits[0, 1, 4, (y[1, 4] + 1) % 13] = 9.0
    logits[0, 2, 0] = 0.0                 # example 2: an unscored position is wrong: still ok
    logits[0, 2, 0, 3] = 9.0
    assert y[1, 4] != IGNORE and y[2, 0] == IGNORE
    ev = evaluate_params(lambda p, xb: logits.expand(xb.shape[0], -1, -1, -1),
                         {"w": torch.zeros(1, 1)}, x, y)
    assert isinstance(ev, ParamEvaluation)
    assert ev.accuracy.item() == pytest.approx(0.75)


def test_evaluate_params_per_member_and_across_chunks():
    spec = _gru_spec()
    ds = load_dataset("arith")
    members = spec.members()
    params = [init_member_params(m, spec.architecture, ds.input_shape, ds.n_classes)
              for m in members]
    stacked = {k: torch.stack([p[k] for p in params]) for k in params[0]}
    forward = population_logits(spec.architecture, None)
    # each member its own examples, in chunks of 7 (not a divisor of 30)
    idx = torch.stack([torch.randperm(600, generator=torch.Generator().manual_seed(i))[:30]
                       for i in range(len(members))])
    ev = evaluate_params(forward, stacked, ds.x_train[idx], ds.y_train[idx], per_member=True,
                         chunk=7)
    for i, p in enumerate(params):
        module = member_module(spec.architecture, ds.input_shape, ds.n_classes, p)
        with torch.no_grad():
            logits = module(F.one_hot(ds.x_train[idx[i]], 13).float())
        y = ds.y_train[idx[i]]
        loss = F.cross_entropy(logits.reshape(-1, 13), y.reshape(-1), ignore_index=IGNORE)
        ok = ((logits.argmax(-1) == y) | (y == IGNORE)).all(1).float().mean()
        assert ev.loss[i].item() == pytest.approx(loss.item(), rel=1e-5)
        assert ev.accuracy[i].item() == pytest.approx(ok.item())


# --- forward and training --------------------------------------------------------------------

@pytest.mark.parametrize("layers", [1, 2])
def test_batched_gru_equals_torch_gru(layers):
    torch.manual_seed(0)
    models = [CharGRU(13, 6, layers).double() for _ in range(3)]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
              for k, _ in models[0].named_parameters()}
    tokens = torch.randint(0, 13, (5, LENGTH))
    out = gru_logits(params, tokens.expand(3, -1, -1), layers)
    for i, m in enumerate(models):
        ref = m(F.one_hot(tokens, 13).double())
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [_gru_spec, _res_spec])
def test_population_training_equals_per_network_loop(make):
    spec = make()
    ds = load_dataset(spec.dataset)
    members = [m for m in spec.members()]
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float64)
        try:
            if ds.x_train.is_floating_point():
                ds = type(ds)(ds.name, ds.x_train.double(), ds.y_train, ds.x_val.double(),
                              ds.y_val, ds.x_test.double(), ds.y_test, ds.n_classes,
                              ds.value_range)
            out = train_param_population(members, spec.architecture, ds, [2], lambda e, p: None)
            for pos in (0, 2):
                ref = train_param_reference(members[pos], spec.architecture, ds)
                for key, value in ref.state_dict().items():
                    torch.testing.assert_close(out[key][pos], value, rtol=0, atol=1e-10)
            # and training moved the weights
            init = init_member_params(members[0], spec.architecture, ds.input_shape,
                                      ds.n_classes)
            assert any((out[k][0] - v).abs().max() > 1e-3 for k, v in init.items())
        finally:
            torch.set_default_dtype(torch.float32)


def test_init_scale_scales_weights_not_biases():
    spec = _gru_spec()
    ds = load_dataset("arith")
    m = spec.members()[0]
    scaled = init_member_params(m, spec.architecture, ds.input_shape, ds.n_classes)
    plain = init_member_params(type(m)(m.member_id, m.config_id, m.seed_index, m.seed,
                                       {**m.hparams, "init_scale": 1.0}),
                               spec.architecture, ds.input_shape, ds.n_classes)
    s = m.hparams["init_scale"]
    torch.testing.assert_close(scaled["rnn.weight_hh_l0"], plain["rnn.weight_hh_l0"] * s)
    torch.testing.assert_close(scaled["rnn.bias_hh_l0"], plain["rnn.bias_hh_l0"])


# --- specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"dataset": "digits"}, "family 'gru' trains on a sequence task"),
    ({"architecture": {"family": "mlp", "hidden": [8]}}, "'arith' is a sequence task"),
    ({"architecture": {"family": "gru", "hidden": [8, 6]}}, "share their width"),
    ({"architecture": {"family": "gru", "channels": [8]}}, "unknown field(s) ['channels']"),
    ({"hparams": {"dropout": [0.1]}}, "hparams.dropout: family 'gru' has no dropout"),
    ({"hparams": {"activation": ["relu"]}}, "hparams.activation: a GRU's gates"),
    ({"shifts": ["gaussian_noise"]}, "shifts: family 'gru'"),
    ({"store_logits": True}, "store_logits: family 'gru'"),
    ({"stop_loss": 0.01}, "stop_loss: not supported for family 'gru'"),
])
def test_gru_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError) as err:
        _gru_spec(**change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_rescnn_spec_errors_and_round_trip():
    with pytest.raises(SpecError, match="'rescnn' needs 2-D images"):
        _res_spec(dataset="mnist1d")
    with pytest.raises(SpecError, match="architecture.kernel_size: 9 is larger"):
        _res_spec(architecture={"family": "rescnn", "kernel_size": 9})
    with pytest.raises(SpecError, match="architecture.kernel_size: 'rescnn' needs an odd"):
        _res_spec(architecture={"family": "rescnn", "kernel_size": 2})
    spec = _res_spec()
    assert ZooSpec.from_dict(spec.to_dict()) == spec
    gru = _gru_spec()
    again = ZooSpec.from_dict(gru.to_dict())
    assert again == gru and again.members()[0].hparams["activation"] == "tanh"
    # n_params without building the module equals the module's
    for s in (spec, gru):
        ds = load_dataset(s.dataset)
        model = build_template(s.architecture, ds.input_shape, ds.n_classes)
        assert s.architecture.n_params(ds.input_shape, ds.n_classes) == \
            sum(p.numel() for p in model.parameters())


# --- the store -------------------------------------------------------------------------------

def test_param_space_round_trip_and_errors():
    space = ParamSpace.from_module(CharGRU(13, 5, 2))
    data = json.loads(json.dumps(space.to_dict()))
    again = space_from_dict(data)
    assert again == space and dict(again.spec) == dict(space.spec)
    assert again.spec_for("np") == space.np_spec
    bad = json.loads(json.dumps(data))
    bad["shapes"][0][1][0] = 6.7
    with pytest.raises(Exception, match="6.7"):
        space_from_dict(bad)
    data["spec"]["rnn.weight_hh_l0"] = [{"gated": 3}, 1]
    with pytest.raises(Exception, match="gated"):
        space_from_dict(data)
    # indexing keeps the batch axis, whatever the integer type
    import numpy as np

    batch = ParamBatch(space, {k: torch.randn(4, 1, *s) for k, s in space.shapes})
    for i in (2, np.int64(2), torch.tensor(2)):
        assert len(batch[i]) == 1
        torch.testing.assert_close(batch[i].params["readout.bias"], batch.params[
            "readout.bias"][2:3])


def test_param_batch_modules_round_trip_and_cat():
    torch.manual_seed(0)
    models = [CharGRU(13, 5) for _ in range(3)]
    space = ParamSpace.from_module(models[0])
    batch = ParamBatch.from_modules(space, models)
    x = F.one_hot(torch.randint(0, 13, (4, LENGTH)), 13).float()
    for original, again in zip(models, batch.to_modules(CharGRU(13, 5)), strict=True):
        with torch.no_grad():
            torch.testing.assert_close(again(x), original(x), rtol=0, atol=0)
    both = ParamBatch.cat([batch[2], batch[:2]])
    assert len(both) == 3
    torch.testing.assert_close(both.params["rnn.weight_hh_l0"][0],
                               batch.params["rnn.weight_hh_l0"][2])
    other = ParamSpace.from_module(CharGRU(13, 6))
    with pytest.raises(Exception, match="different spaces"):
        ParamBatch.cat([batch, ParamBatch.from_modules(other, [CharGRU(13, 6)])])


@pytest.fixture(scope="module")
def gru_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "gru"
    # GRUs that learn something (success rates above 0), so that the table checks bite
    spec = _gru_spec(configs=4, seeds_per_config=2, shard_size=4, checkpoints=[0, "final"],
                     architecture={"family": "gru", "hidden": [24]},
                     hparams={"lr": {"low": 0.01, "high": 0.03}, "optimizer": ["adam"],
                              "epochs": [6], "batch_size": [16]})
    build_zoo(spec, root, max_shards=1)   # "killed" after one shard ...
    zoo = build_zoo(spec, root)           # ... and resumed
    return spec, zoo


def test_gru_zoo_store_round_trip(gru_zoo, tmp_path):
    spec, zoo = gru_zoo
    assert isinstance(zoo.space, ParamSpace) and zoo.family == "gru"
    assert verify_zoo(zoo.root).ok
    rows = zoo.table.query("is_final")
    batch = zoo.weights(rows)
    assert isinstance(batch, ParamBatch) and len(batch) == 8 and batch.channels == 1
    # the stored weights reproduce the table: the modules' success rate and loss on the
    # test questions, and on each member's own training subset
    ds = load_dataset("arith")
    assert rows["train_acc"].max() > 0.05 and rows["test_acc"].max() > 0.0
    members = {m.member_id: m for m in spec.members()}
    from gensight.zoo.train import member_states

    for module, (_, row) in zip(zoo.modules(rows), rows.iterrows(), strict=True):
        subset = member_states([members[row["member_id"]]], len(ds.y_train))[0].subset
        for (x, y), name in (((ds.x_test, ds.y_test), "test"),
                             ((ds.x_train[subset], ds.y_train[subset]), "train")):
            with torch.no_grad():
                logits = module(F.one_hot(x, 13).float())
            ok = ((logits.argmax(-1) == y) | (y == IGNORE)).all(1)
            assert ok.float().mean().item() == pytest.approx(row[f"{name}_acc"], abs=1e-6)
            loss = F.cross_entropy(logits.reshape(-1, 13), y.reshape(-1), ignore_index=IGNORE)
            assert loss.item() == pytest.approx(row[f"{name}_loss"], rel=1e-4)
    # a resumed build equals an uninterrupted one, byte for byte
    other = build_zoo(spec, tmp_path / "again")
    for name in ("shard-00000", "shard-00001"):
        assert (zoo.root / "shards" / f"{name}.safetensors").read_bytes() == \
            (other.root / "shards" / f"{name}.safetensors").read_bytes()


def test_stored_spec_permutations_preserve_the_function(gru_zoo):
    _, zoo = gru_zoo
    rows = zoo.table.query("is_final").iloc[:2]
    space = zoo.space
    batch = zoo.weights(rows)
    gen = torch.Generator().manual_seed(0)
    perms = unf.random_permutation(space.spec, space.shape_dict, gen, len(batch))
    moved = ParamBatch(space, unf.permute(batch.params, space.spec, perms))
    x = F.one_hot(load_dataset("arith").x_val[:50], 13).float()
    ds = load_dataset("arith")
    for a, b in zip(batch.state_dicts(), moved.state_dicts(), strict=True):
        assert any((a[k] - b[k]).abs().max() > 1e-3 for k in a)
        ma = member_module(zoo_arch(zoo), ds.input_shape, 13, a)
        mb = member_module(zoo_arch(zoo), ds.input_shape, 13, b)
        with torch.no_grad():
            torch.testing.assert_close(ma(x), mb(x), rtol=0, atol=1e-5)


def zoo_arch(zoo):
    return ZooSpec.from_dict(zoo.manifest["spec"]).architecture


def test_damaged_param_shard_is_found(gru_zoo, tmp_path):
    import shutil

    _, zoo = gru_zoo
    root = tmp_path / "copy"
    shutil.copytree(zoo.root, root)
    path = root / "shards" / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify_zoo(root)
    assert not report.ok and 1 in report.damaged_shards


def test_rescnn_zoo_table_matches_modules(tmp_path):
    spec = _res_spec(configs=2, seeds_per_config=2, shard_size=4, shifts=["gaussian_noise"],
                     severities=[3], store_logits=True)
    zoo = build_zoo(spec, tmp_path / "res")
    assert isinstance(zoo.space, ParamSpace)
    # the residual addition ties the stem's channels to every block's output channels
    spec_h = zoo.space.spec
    assert spec_h["stem.weight"][0] == spec_h["blocks.0.conv2.weight"][0] == \
        spec_h["blocks.1.conv2.weight"][0] == spec_h["head.weight"][1]
    rows = zoo.table.query("is_final")
    ds = load_dataset("digits")
    for module, acc in zip(zoo.modules(rows), rows["test_acc"], strict=True):
        with torch.no_grad():
            pred = module(ds.x_test).argmax(1)
        assert (pred == ds.y_test).float().mean().item() == pytest.approx(acc, abs=1e-6)
    assert zoo.logits(rows, "gaussian_noise-3").shape == (4, len(ds.y_test), 10)
    assert "shift:gaussian_noise-3_acc" in rows.columns


def test_feedforward_only_work_is_refused_in_one_line(gru_zoo):
    from gensight.measures import zoo_measures

    _, zoo = gru_zoo
    with pytest.raises(ZooStoreError, match="holds family 'gru' networks; computing"):
        zoo_measures(zoo, ["param.norm"], zoo.table.query("is_final"))


# --- predictors -------------------------------------------------------------------------------

def test_predictors_on_a_gru_zoo(gru_zoo):
    from gensight.predict import PredictError, split_zoo
    from gensight.predict.predictors import make_predictor

    _, zoo = gru_zoo
    train, test = split_zoo(zoo, by="seed")
    for method in ("unf", "unf-np", "deepsets", "statnn"):
        pred = make_predictor(method, epochs=2, seed=0).fit(train).predict(test)
        assert pred.shape == (len(test),) and ((pred >= 0) & (pred <= 1)).all()
    with pytest.raises(PredictError, match="nfn-hnp needs an MLP or CNN zoo"):
        make_predictor("nfn-hnp").check_split(train)


def test_unf_predictor_is_invariant_to_hidden_permutations(gru_zoo):
    from gensight.predict import split_zoo
    from gensight.predict.predictors import UNFPredictor

    _, zoo = gru_zoo
    train, test = split_zoo(zoo, by="seed")
    model = UNFPredictor(epochs=2, seed=0).fit(train)
    batch = model._scaled(test.weights)
    space = batch.space
    perms = unf.random_permutation(space.spec, space.shape_dict,
                                   torch.Generator().manual_seed(1), len(batch))
    moved = ParamBatch(space, unf.permute(batch.params, space.spec, perms))
    with torch.no_grad():
        a, b = model.model_(batch), model.model_(moved)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with torch.no_grad():  # and it is not a constant: other weights, other predictions
        assert (a - model.model_(batch.map(lambda t: t * 1.5))).abs().max() > 1e-6
