"""Search spaces as data: which ops an edge may use, which rules each op may learn by, and the
shape of the supernet's cells. One YAML file per space under ``search_spaces/``::

    name: bionas
    description: ...
    candidates:              # op: the rules it may take ([] for an op without weights)
      none: []
      max_pool_3x3: []
      skip_connect: [usf, brsf, frsf]
      sep_conv_3x3: [fa, usf, brsf, frsf]
    supernet:                # every key optional; these are the BioNAS appendix 7.1 values
      channels: 16
      cells: 5
      nodes: 4

A space never knows how it is searched. Loading checks every name against the op and rule
registries and every pair for sense: a rule needs weighted layers of a type it can learn, so an
op without weights takes no rule (written ``[]``, meaning the bare op, i.e. ``bp``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bionas import ops, rules
from bionas.candidate import Candidate
from bionas.errors import ConfigError, UnknownNameError
from bionas.io import read_text_file


def spaces_dir() -> Path:
    """Where named spaces live: ``bionas/search_spaces`` in an installed wheel, else the
    repository's top-level ``search_spaces/`` (source checkouts and editable installs)."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "search_spaces", here.parents[1] / "search_spaces"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("no search_spaces/ folder found beside the bionas package; reinstall bionas")


@dataclass(frozen=True)
class SupernetShape:
    """Cell structure of the search network (DARTS: Liu et al. 2019, section 2.1)."""

    channels: int = 16  # initial channels C; doubled at each reduction cell
    cells: int = 5  # N; reduction cells sit at cells // 3 and 2 * cells // 3
    nodes: int = 4  # intermediate nodes per cell; node j has 2 + j incoming edges
    stem_multiplier: int = 3

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"supernet.{f.name} must be a positive integer, got {value!r}")
        if self.cells < 3:
            raise ConfigError(f"supernet.cells must be at least 3 (two are reductions), got {self.cells}")

    @property
    def edges_per_cell(self) -> int:
        return sum(2 + j for j in range(self.nodes))  # 14 for 4 nodes

    @property
    def reduction_cells(self) -> tuple[int, int]:
        return self.cells // 3, 2 * self.cells // 3


@dataclass(frozen=True)
class SearchSpace:
    """The candidates every edge mixes, in file order, and the supernet's shape."""

    name: str
    candidates: tuple[Candidate, ...]
    supernet: SupernetShape = field(default_factory=SupernetShape)
    description: str = ""
    source: str = ""  # the file it was read from

    def __post_init__(self):
        if not self.candidates:
            raise ConfigError(f"search space {self.name!r} has no candidates")
        if len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(f"search space {self.name!r} lists a candidate twice")

    def __len__(self) -> int:
        return len(self.candidates)

    def to_dict(self) -> dict:
        by_op: dict[str, list[str]] = {}
        for c in self.candidates:
            rules_of_op = by_op.setdefault(c.op, [])
            if ops.weighted_layer_types(c.op):
                rules_of_op.append(c.rule)
        return {"name": self.name, "description": self.description, "candidates": by_op,
                "supernet": dataclasses.asdict(self.supernet)}


def check_pair(op: str, rule: str) -> None:
    """Raise :class:`ConfigError` unless ``rule`` can learn the weighted layers of ``op``."""
    layer_types = ops.weighted_layer_types(op)
    rule_cls = rules.RULES.get(rule)
    if not layer_types:
        raise ConfigError(f"op {op!r} has no weights, so rule {rule!r} would do nothing; give the bare op "
                          f"('{op}' in a genotype, '{op}: []' in a space file)")
    unsupported = [t.__name__ for t in layer_types if not issubclass(t, rule_cls.layer_types)]
    if unsupported:
        raise ConfigError(f"rule {rule!r} cannot learn the {', '.join(unsupported)} layers of op {op!r}")


def space_from_dict(data: dict, source: str = "") -> SearchSpace:
    """Build and validate a space from parsed YAML; errors name the offending entry."""
    where = f" in {source}" if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"search space{where} must be a mapping with 'name' and 'candidates'")
    unknown = sorted(set(data) - {"name", "description", "candidates", "supernet"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}{where}; allowed: name, description, "
                          f"candidates, supernet")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"search space{where} needs a 'name'")
    table = data.get("candidates")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"search space {name!r}{where} needs 'candidates: {{op: [rules]}}'")
    candidates = []
    for op, op_rules in table.items():
        if op not in ops.OPS:
            raise UnknownNameError(f"search space {name!r}{where}: unknown op {op!r}; "
                                   f"choose from {', '.join(ops.OPS.names())}")
        if op_rules is None:
            op_rules = []
        if not isinstance(op_rules, list) or not all(isinstance(r, str) for r in op_rules):
            raise ConfigError(f"search space {name!r}{where}: '{op}' must list rule names, got {op_rules!r}")
        if not op_rules:
            if ops.weighted_layer_types(op):
                raise ConfigError(f"search space {name!r}{where}: op {op!r} has weights; list the rules it "
                                  f"may learn by (e.g. [bp])")
            candidates.append(Candidate(op))
            continue
        for rule in op_rules:
            if rule not in rules.RULES:
                raise UnknownNameError(f"search space {name!r}{where}: op {op!r} lists unknown rule {rule!r}; "
                                       f"choose from {', '.join(rules.RULES.names())}")
            try:
                check_pair(op, rule)
            except ConfigError as err:
                raise ConfigError(f"search space {name!r}{where}: {err}") from None
            candidates.append(Candidate(op, rule))
    shape = data.get("supernet") or {}
    if not isinstance(shape, dict):
        raise ConfigError(f"search space {name!r}{where}: 'supernet' must be a mapping")
    allowed = {f.name for f in dataclasses.fields(SupernetShape)}
    bad = sorted(set(shape) - allowed)
    if bad:
        raise ConfigError(f"search space {name!r}{where}: unknown supernet key(s) {', '.join(bad)}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return SearchSpace(name, tuple(candidates), SupernetShape(**shape), data.get("description", ""), source)


def resolve_space_path(name_or_path: str | Path) -> Path:
    """``name_or_path`` as a file if it looks like one (a ``.yaml``/``.yml`` suffix or a ``/``),
    else ``search_spaces/<name>.yaml``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        if not path.is_file():
            raise ConfigError(f"search space file {path} does not exist")
        return path
    candidate = spaces_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in spaces_dir().glob("*.yaml"))
        raise UnknownNameError(f"unknown search space {str(name_or_path)!r}; choose from {', '.join(known)} "
                               f"or give a YAML path")
    return candidate


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load ``search_spaces/<name>.yaml`` or a YAML file path, validated."""
    path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(read_text_file(path, "search space", "search-space YAML file"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return space_from_dict(data, source=str(path))
