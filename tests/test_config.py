"""The schema: defaults, YAML, --set overrides, and one-line errors that name the key."""

from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config import DEFAULT_CONFIG, Config, load_config
from ensemble.base.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_digits_yaml_is_the_embedded_default():
    assert DEFAULT_CONFIG == REPO / "configs" / "digits.yaml"
    assert yaml.safe_load(DEFAULT_CONFIG.read_text()) == Config().model_dump(mode="json")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_overrides_parse_values_as_yaml():
    config = load_config(None, ["ensemble.members=5", "ensemble.model.params.hidden=[64, 32]",
                                "data.download=true", "ensemble.train.optimizer.lr=0.01"])
    assert config.ensemble.members == 5
    assert config.ensemble.model.params["hidden"] == [64, 32]
    assert config.data.download is True
    assert config.ensemble.train.optimizer.lr == 0.01


@pytest.mark.parametrize(
    "override, named",
    [
        ("ensemble.memberz=3", "ensemble.memberz: unknown key"),
        ("ensemble.members=three", "ensemble.members"),
        ("ensemble.train.epochs=0", "ensemble.train.epochs"),
        ("ensemble.train.optimizer.lr=-1", "ensemble.train.optimizer.lr"),
        ("data.name=imagenet", "unknown dataset 'imagenet'"),
        ("ensemble.model.name=transformer", "unknown model 'transformer'"),
        ("ensemble.model.params.hiden=[3]", "no parameter 'hiden'"),
        ("ensemble.resources.num_gpus=1.5", "ensemble.resources.num_gpus"),
        ("ensemble.mean=harmonic", "ensemble.mean"),
        ("student.cache.rest_samples=8", "student.cache: rest_samples: the draws come from the classes "
                                         "outside the top K; set top_k too"),
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ensemble: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "--set", "ensemble.members=4", "--output-dir", "elsewhere"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["ensemble"]["members"] == 4
    assert shown["output_dir"] == "elsewhere"


def test_cli_reports_bad_config_in_one_line_with_exit_code_2(capsys):
    assert main(["config", "show", "--set", "ensemble.members=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "ensemble.members" in err and "\n" not in err
