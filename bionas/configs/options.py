"""Config dataclasses: fields that carry their own checks, and one way to layer them.

Every command has one dataclass of options (``SearchConfig``, ``TrainConfig``, ``AttackConfig``,
``HebbianConfig``; a search strategy has one for its own options). A field is declared with
:func:`option`, which records its help text and its constraints as field metadata::

    lr: float = option(0.1, "initial learning rate", gt=0)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    per_class: int | None = option(None, "training images per class (null: all)", ge=1)

:func:`check` then coerces and validates every field from its annotation and metadata -- so a
value of the wrong type (``--set lr=abc``), a NaN or infinity where a finite number is needed,
an out-of-range number or an unknown choice is a one-line :class:`ConfigError` naming the field.
A class may add checks that involve several fields in a ``check_together`` method.

Layering (:func:`resolve`), later wins: the dataclass defaults < the class's base preset (if it
picks one from the options, like the train command's paper recipe per model and dataset) < the
named ``--preset`` from ``bionas/configs/<command>.yaml`` < a ``--config`` YAML file (e.g. a run's
saved ``config.yaml``) < command-line flags and ``--set KEY=VALUE``. Unknown keys are errors
naming where they came from.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from bionas.errors import ConfigError, UnknownNameError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | Callable[[], Any] | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           flag: str | None = None, finite: bool = True, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help text and constraints.

    ``choices``: the allowed values, a callable returning them, or a registry (then its own
    "unknown <kind>" error names the problem);
    ``ge``/``gt``/``le``/``lt``: bounds for numbers (for lists of numbers: for every item);
    ``flag``: the command-line flag that sets it (``"--lr"``; fields without one take ``--set``);
    ``finite``: refuse NaN and infinity (floats only); ``factory``: a default factory (lists, dicts).
    """
    metadata = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "flag": flag,
                "finite": finite}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _choices_source(f: dataclasses.Field) -> Any:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The allowed values of a field, or ``None`` for any."""
    choices = _choices_source(f)
    if hasattr(choices, "names"):  # a Registry
        return tuple(choices.names())
    return None if choices is None else tuple(choices)


def split_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(name: str, tp: Any, value: Any, meta: dict) -> Any:
    """``value`` as type ``tp``, where the conversion is lossless; else a ConfigError."""
    origin = typing.get_origin(tp) or tp
    if tp is Any:
        return value
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if origin is float:
        if isinstance(value, str):  # YAML 1.1 reads ``2e-2`` (no dot) and ``nan`` as strings
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if meta.get("finite", True) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return value
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name} must hold {len(args)} values, got {value!r}")
            return tuple(_coerce(name, a, v, meta) for a, v in zip(args, value))
        item = args[0] if args else Any
        items = [_coerce(f"every item of {name}", item, v, meta) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is not Any:
            return {k: _coerce(f"{name}.{k}", args[1], v, meta) for k, v in value.items()}
        return dict(value)
    return value


def _check_value(name: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    inner, optional = split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    value = _coerce(name, inner, value, f.metadata)
    registry = _choices_source(f)
    if hasattr(registry, "get") and hasattr(registry, "names"):  # a Registry: its own "unknown ..." error
        registry.get(value)
        return value
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise UnknownNameError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for v in numbers:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for key, ok, word in (("ge", lambda a, b: a >= b, "at least"), ("gt", lambda a, b: a > b, "greater than"),
                              ("le", lambda a, b: a <= b, "at most"), ("lt", lambda a, b: a < b, "less than")):
            bound = f.metadata.get(key)
            if bound is not None and not ok(v, bound):
                raise ConfigError(f"{name} must be {word} {bound:g}, got {v!r}")
    return value


def check(config: C) -> C:
    """``config`` with every field coerced to its declared type and checked against its metadata,
    then the class's own ``check_together()`` if it has one; one-line ConfigErrors otherwise."""
    hints = typing.get_type_hints(type(config))
    values = {f.name: _check_value(f.name, f, hints[f.name], getattr(config, f.name))
              for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    config = dataclasses.replace(config, **values)  # type: ignore[type-var]
    together = getattr(config, "check_together", None)
    if together is not None:
        together()
    return config


def to_dict(config) -> dict:
    """Plain YAML-safe values (tuples as lists) for ``config.yaml``."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def apply_options(config: C, options: dict, source: str, command: str) -> C:
    """``config`` with ``options`` set (not yet checked); unknown keys are an error naming ``source``.

    A dotted key sets one entry of a mapping field: ``rule_options.usf.scale=1.0`` sets
    ``rule_options["usf"]["scale"]``.
    """
    names = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    flat: dict[str, Any] = {}
    for key, value in options.items():
        head, _, rest = str(key).partition(".")
        if head not in names:
            raise ConfigError(f"unknown {command} option {head!r} in {source}; known: {', '.join(names)}")
        if not rest:
            flat[head] = value
            continue
        target = flat.get(head, getattr(config, head))
        if not isinstance(target, dict):
            raise ConfigError(f"{key} in {source}: {head} is not a mapping, so it has no entry {rest!r}")
        target = copy.deepcopy(target)
        node = target
        *parents, leaf = rest.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key} in {source}: {part} is not a mapping")
        node[leaf] = value
        flat[head] = target
    return dataclasses.replace(config, **flat)  # type: ignore[type-var]


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


def resolve(config_type: type[C], command: str, preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict | None = None) -> C:
    """Defaults < base preset < ``preset`` < ``config_file`` < ``overrides``, checked.

    ``config_type.base_preset(options)`` (optional) names a preset to apply first, chosen from
    the merged options of the later layers (the train command picks the paper's recipe for the
    model and dataset this way); it is recorded in the field ``base_preset``.
    """
    from bionas import configs

    layers = []
    if preset:
        layers.append((configs.preset(command, preset), f"preset {preset!r}"))
    if config_file:
        layers.append((configs.load_yaml_mapping(config_file, f"{command} config"), str(config_file)))
    if overrides:
        layers.append((overrides, "the command line"))
    config = config_type()
    if "preset" in {f.name for f in dataclasses.fields(config_type)} and preset:  # type: ignore[arg-type]
        config = dataclasses.replace(config, preset=preset)  # type: ignore[type-var]
    picker = getattr(config_type, "base_preset_for", None)
    base_config = None
    if picker is not None:
        merged: dict = {}
        for options, _ in layers:
            merged.update(options)
        base = picker(merged)
        config = apply_options(config, configs.preset(command, base), f"preset {base!r}", command)
        config = dataclasses.replace(config, base_preset=base)  # type: ignore[type-var]
        base_config = config
    for options, source in layers:
        config = apply_options(config, options, source, command)
    adjust = getattr(config_type, "adjust_to_base", None)
    if adjust is not None and base_config is not None:
        config = adjust(config, base_config, {k for options, _ in layers for k in options})
    return check(config)


def check_resume(saved: C, overrides: dict | None, free: tuple[str, ...], command: str) -> None:
    """Refuse command-line ``overrides`` that would change the ``saved`` config of a run being
    resumed (fields in ``free``, such as ``out`` and ``progress``, may change)."""
    changed = {k: v for k, v in (overrides or {}).items()
               if k not in free and check(apply_options(saved, {k: v}, "the command line", command)) != saved}
    if changed:
        raise ConfigError(f"--resume continues the saved run, which has "
                          f"{', '.join(f'{k}={_saved_value(saved, k)!r}' for k in changed)}; "
                          f"drop {', '.join(changed)} from the command or start a new run in another --out")


def _saved_value(config, key: str) -> Any:
    """The value at a (possibly dotted) key of a config; ``"default"`` for a mapping entry it lacks."""
    head, *rest = key.split(".")
    value = getattr(config, head)
    for part in rest:
        if not isinstance(value, dict) or part not in value:
            return "default"
        value = value[part]
    return value
