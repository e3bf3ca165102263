"""Packaged YAML configs: the named presets of each command (``search.yaml``: ``smoke``, ...)."""
from __future__ import annotations

from pathlib import Path

import yaml

from bionas.errors import ConfigError, UnknownNameError

CONFIG_DIR = Path(__file__).resolve().parent


def load_yaml_mapping(path: str | Path, what: str) -> dict:
    """Parse a YAML file that must hold a mapping; one-line errors name the file."""
    from bionas.io import read_text_file

    path = Path(path)
    text = read_text_file(path, what, "YAML file of options")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} options, got {type(data).__name__}")
    return data


def presets(command: str) -> dict[str, dict]:
    """Every named preset of ``configs/<command>.yaml``, in file order."""
    return load_yaml_mapping(CONFIG_DIR / f"{command}.yaml", f"{command} presets").get("presets", {})


def preset(command: str, name: str) -> dict:
    """The options of preset ``name`` in ``configs/<command>.yaml``."""
    known = presets(command)
    if name not in known:
        raise UnknownNameError(f"unknown {command} preset {name!r}; choose from {', '.join(known)}")
    return dict(known[name] or {})
