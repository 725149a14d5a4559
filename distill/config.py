"""The one config schema of the whole pipeline, composed from each stage's sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ensemble.config import StageConfig, dump_config, fingerprint, load_config as _load
from specialists.config import SpecialistsConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"


class Config(StageConfig):
    """Root of the config: the ensemble stage's sections plus ``specialists`` (and later ``student``)."""

    specialists: SpecialistsConfig = Field(default_factory=SpecialistsConfig)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML (default: the digits demo) + ``--set a.b=c`` overrides, validated; a wrong key is an error."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return _load(Config, path, overrides)


def config_hash(config: Config, *sections: str) -> str:
    tree = config.model_dump(mode="json")
    return fingerprint({name: tree[name] for name in sections} if sections else tree)


__all__ = ["Config", "load_config", "dump_config", "config_hash", "DEFAULT_CONFIG"]
