import pytest
import yaml

from fedlib.config import ParamsError, load_params, validate
from tests.conftest import tiny_raw


def test_defaults_filled_and_repo_params_valid():
    p = validate(tiny_raw())
    assert p.train.weight_decay == 0.0 and p.methods.fedavgm.beta == 0.9
    load_params("params.yaml")      # the committed params must validate


@pytest.mark.parametrize("dotted, value, expect", [
    ("train.roundz", 3, r"unknown key train\.roundz; allowed keys in train: .*rounds"),
    ("train.rounds", 0, r"train\.rounds = 0 .*integer >= 1"),
    ("train.rounds", "ten", r"train\.rounds = 'ten' .*integer"),
    ("train.lr", -0.1, r"train\.lr = -0\.1 .*number > 0"),
    ("partition.alpha", 0.0, r"partition\.alpha = 0\.0 .*> 0"),
    ("partition.alpha", -1, r"partition\.alpha = -1 "),
    ("train.clients_per_round", 11, r"clients_per_round = 11 exceeds partition\.num_clients = 10; allowed: 1\.\.10"),
    ("train.methods", ["fedavg", "fedmagic"], r"unknown method 'fedmagic'; allowed methods: .*fedavg"),
    ("data.dataset", "imagenet", r"data\.dataset = 'imagenet' .*one of mnist5k, digits"),
    ("train.model", "vit", r"train\.model = 'vit' .*one of mlp, mlp4, cnn, cnn_half, resnet18"),
    ("methods.fedavgm.beta", 1.5, r"methods\.fedavgm\.beta = 1\.5 .*< 1"),
    ("bogus.key", 1, r"unknown section bogus"),
    ("split.cut", "layer2", r"split\.cut = 'layer2' is not a cut point of split\.model = 'cnn'; allowed: conv1, conv2, fc1"),
    ("split.clients_per_round", 20, r"split\.clients_per_round = 20 exceeds split\.num_clients = 10"),
])
def test_bad_input_names_key_value_and_allowed(dotted, value, expect):
    raw = tiny_raw()
    *parents, leaf = dotted.split(".")
    node = raw
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value
    with pytest.raises(ParamsError, match=expect):
        validate(raw)


def test_snapshot_rounds_follow_train_rounds():
    assert validate(tiny_raw(rounds=2, snapshot_rounds=[0, 1, 15, 16, 29])).train.snapshot_rounds == [0, 1]


def test_load_params_overrides(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(tiny_raw()))
    assert load_params(f, {"train.rounds": 7}).train.rounds == 7
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
