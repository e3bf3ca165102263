"""Config dataclasses from layered options: defaults < preset < YAML file < command line.

Each command keeps one flat dataclass of options (``SearchConfig``, ``TrainConfig``); the helpers
here set fields from mappings with the same checks for all of them: unknown keys are errors
naming where they came from, ints become floats where a float is expected, booleans must be
booleans, lists become tuples where the field is a tuple.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from bionas.errors import ConfigError

C = TypeVar("C")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def coerce(config_type: type, name: str, value: Any) -> Any:
    """``value`` in the type of field ``name`` where the conversion is lossless."""
    default = _default({f.name: f for f in dataclasses.fields(config_type)}[name])
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(float(v) if isinstance(d, float) else v for v, d in zip(value, default)) \
            if len(value) == len(default) else tuple(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def apply_options(config: C, options: dict, source: str, command: str) -> C:
    """``config`` with ``options`` set; unknown keys are an error naming ``source``."""
    names = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown {command} option(s) {', '.join(unknown)} in {source}; known: {', '.join(names)}")
    return dataclasses.replace(config, **{k: coerce(type(config), k, v) for k, v in options.items()})  # type: ignore[type-var]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"key=value"`` with a YAML-parsed value (``lr=0.05``, ``rule_options={usf: {scale: 1.0}}``)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None


def check_resume(saved: C, overrides: dict | None, free: tuple[str, ...], command: str) -> None:
    """Refuse command-line ``overrides`` that would change the ``saved`` config of a run being
    resumed (fields in ``free``, such as ``out`` and ``progress``, may change)."""
    changed = {k: v for k, v in (overrides or {}).items()
               if k not in free and apply_options(saved, {k: v}, "the command line", command) != saved}
    if changed:
        raise ConfigError(f"--resume continues the saved run, which has "
                          f"{', '.join(f'{k}={getattr(saved, k)!r}' for k in changed)}; "
                          f"drop {', '.join(changed)} from the command or start a new run in another --out")
