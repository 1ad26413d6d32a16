import pytest

from gensight.zoo import SpecError, ZooSpec, plan_shards

BASE = {"dataset": "digits", "architecture": {"family": "mlp", "hidden": [8]}}


def spec(**over):
    data = {**BASE, **over}
    return ZooSpec.from_dict(data)


@pytest.mark.parametrize("over, fragment", [
    ({"datset": "digits"}, "unknown field(s) ['datset']"),
    ({"dataset": "cifar"}, "dataset: unknown dataset 'cifar'"),
    ({"architecture": {"family": "rnn"}}, "architecture.family: expected one of"),
    ({"architecture": {"family": "mlp", "hidden": [8, -1]}}, "architecture.hidden"),
    ({"architecture": {"family": "mlp", "channels": [8]}}, "unknown field(s) ['channels']"),
    ({"hparams": {"lr": {"low": 0.1, "high": 0.01}}}, "hparams.lr: expected numbers with low"),
    ({"hparams": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "hparams.lr: a log range"),
    ({"hparams": {"optimizer": ["sgd", "lbfgs"]}}, "hparams.optimizer: value 'lbfgs'"),
    ({"hparams": {"dropout": [1.5]}}, "hparams.dropout: value 1.5 is invalid"),
    ({"hparams": {"epochs": [2.5]}}, "hparams.epochs: expected integers"),
    ({"hparams": {"batch_size": []}}, "hparams.batch_size: expected a non-empty list"),
    ({"hparams": {"optimizer": {"low": 1, "high": 2}}}, "hparams.optimizer: expected a list"),
    ({"hparams": {"learning_rate": [0.1]}}, "unknown hyperparameter(s) ['learning_rate']"),
    ({"mode": "grid", "hparams": {"lr": {"low": 0.01, "high": 0.1}}}, "mode 'grid' needs"),
    ({"shifts": ["snow"]}, "shifts: unknown shift 'snow'"),
    ({"severities": [0, 3]}, "severities: expected values in 1..5"),
    ({"checkpoints": [-1]}, "checkpoints: expected epochs"),
    ({"seeds_per_config": 0}, "seeds_per_config: expected an integer >= 1"),
    ({"store_logits": "yes"}, "store_logits: expected true or false"),
])
def test_bad_specs_name_the_field(over, fragment):
    with pytest.raises(SpecError) as info:
        spec(**over)
    assert fragment in str(info.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        ZooSpec.from_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("dataset = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        ZooSpec.from_toml(bad)


def test_sampling_is_seeded_and_seeds_per_config_share_hparams():
    s = spec(configs=5, seeds_per_config=3,
             hparams={"lr": {"low": 0.001, "high": 0.1, "log": True}, "optimizer": ["sgd", "adam"]})
    members = s.members()
    assert len(members) == 15
    assert [m.hparams for m in members] == [m.hparams for m in s.members()]
    for cid in range(5):
        group = [m for m in members if m.config_id == cid]
        assert len({m.seed for m in group}) == 3
        assert all(m.hparams == group[0].hparams for m in group)
    assert all(0.001 <= m.hparams["lr"] <= 0.1 for m in members)
    other = spec(configs=5, seeds_per_config=3, seed=1,
                 hparams={"lr": {"low": 0.001, "high": 0.1, "log": True}})
    assert [m.hparams["lr"] for m in other.members()] != [m.hparams["lr"] for m in members]


def test_grid_mode_and_shard_plan():
    s = spec(mode="grid", seeds_per_config=2, shard_size=3,
             hparams={"lr": [0.1, 0.01], "optimizer": ["sgd", "adam"], "epochs": [1, 2]})
    members = s.members()
    assert len(members) == 2 * 2 * 2 * 2
    plans = plan_shards(s)
    assert sorted(m.member_id for p in plans for m in p.members) == sorted(
        m.member_id for m in members)
    for p in plans:  # a shard never mixes structural hyperparameters
        assert len({m.group_key() for m in p.members}) == 1 and len(p.members) <= 3
    assert s.content_hash() == spec(mode="grid", seeds_per_config=2, shard_size=3, hparams={
        "lr": [0.1, 0.01], "optimizer": ["sgd", "adam"], "epochs": [1, 2]}).content_hash()
    assert s.checkpoint_epochs(2) == (0, 2)
