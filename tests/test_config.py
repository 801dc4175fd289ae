from pathlib import Path

import pytest

from hftl.config import Config, ConfigError, load_config, parse_args, save_config

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("recipes", "configs").rglob("*.yaml"))


def test_defaults_validate():
    cfg = load_config()
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.strategy.name == "full"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # a fine-tuning config is named after its strategy; other recipes' configs after the recipe
    assert path.stem.endswith((cfg.strategy.name, "ladder", "pretrain", "transfer", "disentangle")), path.stem


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "train.epochs=3",
            "strategy.name=lora",
            "strategy.peft.r=16",
            "strategy.peft.target_modules=[query,value]",
            "model.head_hidden=[64]",
            "train.group_by_length=false",
        ],
    )
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 3.0
    assert cfg.strategy.peft == {"r": 16, "target_modules": ["query", "value"]}
    assert cfg.model.head_hidden == [64]
    assert cfg.train.group_by_length is False


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.learning_rate=1e-3"])
    message = str(err.value)
    assert "train.learning_rate" in message and "'lr'" in message and "epochs" in message


def test_unknown_section_and_suggestion():
    with pytest.raises(ConfigError, match="did you mean strategy"):
        load_config(None, ["stratgy.name=lora"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match=r"train.scheduler='steep'.*linear"):
        load_config(None, ["train.scheduler=steep"])


def test_unknown_strategy_lists_strategies():
    with pytest.raises(ConfigError, match=r"strategy.name='lorra'.*linear_probe.*lora"):
        load_config(None, ["strategy.name=lorra"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.lr=fast", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.test_size=0.9", "data.test_size"),
        ("train.batch_size=30", "train.batch_size"),
    ],
)
def test_bad_values_name_the_key(override, key):
    extra = ["train.grad_accum=4"] if override == "train.batch_size=30" else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override, *extra])


def test_push_needs_repo_id():
    with pytest.raises(ConfigError, match="hub.repo_id"):
        load_config(None, ["hub.push=true"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["strategy.name=lora", "strategy.peft.r=4", "output_dir=x"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_parse_args(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\n")
    cfg = parse_args(["--config", str(path), "train.lr=0.1"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.1
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_args(["oops"])


@pytest.mark.parametrize("override, named", [
    ("train.layer_lr_decay=2", "train.layer_lr_decay=2.0"),
    ("train.unfreeze_every=-1", "train.unfreeze_every=-1.0"),
    ("train.num_workers=-2", "train.num_workers=-2"),
    ("train.compile=maybe", "train.compile='maybe'"),
])
def test_training_switches_out_of_range_are_named(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(named)
