import pytest

from kagglecv.core.config import load_config
from kagglecv.core.errors import UserError


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: resnet18\nepochs: 3\nlr: auto\n")
    cfg = load_config(path, ["epochs=7", "lr=3e-3", "pretrained=false", "img_size=64", "mean=[0.5,0.5,0.5]"])
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.pretrained, cfg.img_size) == ("resnet18", 7, 0.003, False, 64)
    assert cfg.mean == [0.5, 0.5, 0.5]
    assert load_config(path).lr == "auto"


def test_unknown_key_names_the_closest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("epocs: 3\n")
    with pytest.raises(UserError, match=r"r.yaml: unknown config key 'epocs'. Did you mean 'epochs'\?"):
        load_config(path)
    with pytest.raises(UserError, match="Did you mean 'batch_size'"):
        load_config(None, ["batchsize=8"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=three", "'epochs' must be int"),
        ("lr=fast", "lr must be a number or 'auto'"),
        ("pretrained=maybe", "'pretrained' must be bool"),
        ("epochs", "is not key=value"),
        ("epochs=0", "epochs must be at least 1"),
        ("device=tpu", "device must be auto, cpu or cuda"),
        ("amp_dtype=fp8", "amp_dtype must be auto, bf16 or fp16"),
        ("img_size=0", "img_size must be at least 8"),
        ("mean=[0.5]", "mean needs 3 values"),
        ("lr=-1", "lr must lie between 0 and 10"),
        ("layer_decay=1.5", "layer_decay must lie in"),
        ("label_smoothing=1.0", "label_smoothing in"),
        ("scale=1.2", "scale must lie in"),
        ("rotate=-5", "rotate and shift must not be negative"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [resnet\nepochs: 3\n")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load(workdir):
    for name in ("default", "demo", "smoke"):
        load_config(f"configs/{name}.yaml")
