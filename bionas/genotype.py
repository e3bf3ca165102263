"""Genotypes: the discrete cell a search returns, every edge carrying its op *and* its rule.

A cell has two inputs (nodes 0 and 1: the outputs of the two previous cells) and ``nodes``
intermediate nodes numbered 2, 3, ...; each intermediate node sums its chosen incoming edges,
and the cell's output concatenates the nodes in ``concat``. Saved as JSON::

    {"format": "bionas-genotype/1", "space": "bionas",
     "normal": [{"node": 2, "source": 0, "op": "sep_conv_3x3", "rule": "usf"}, ...],
     "normal_concat": [2, 3, 4, 5], "reduce": [...], "reduce_concat": [2, 3, 4, 5],
     "weights": {"candidates": ["none|bp", ...], "normal": [[...]], "reduce": [[...]]}}

DARTS-style literals are read too -- ``Genotype(normal=[('sep_conv_3x3|usf', 0), ...],
normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=range(2, 6))`` -- by walking the syntax
tree (never ``eval``): two edges per node in order, ``op|rule`` carrying the rule, a bare op
meaning ``bp``.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bionas.candidate import Candidate
from bionas.errors import BionasError, ConfigError
from bionas.io import save_json

FORMAT = "bionas-genotype/1"


class GenotypeError(BionasError):
    """A genotype file or literal that cannot be read or does not fit its space."""


@dataclass(frozen=True)
class Edge:
    node: int  # the intermediate node it feeds (2, 3, ...)
    source: int  # 0, 1: cell inputs; 2, 3, ...: earlier intermediate nodes
    op: str
    rule: str = "bp"

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.op, self.rule)


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    space: str = ""
    weights: dict | None = field(default=None, compare=False)  # final mixing weights, if searched

    # --- checks -------------------------------------------------------------------------------
    def validate(self, space=None) -> "Genotype":
        """Structural checks, and with a :class:`~bionas.space.SearchSpace` also that every
        (op, rule) is one of its candidates and the node count matches. Returns ``self``."""
        from bionas.ops import has_weights
        from bionas.space import check_pair

        nodes = space.supernet.nodes if space is not None else None
        for cell, edges, concat in (("normal", self.normal, self.normal_concat),
                                    ("reduce", self.reduce, self.reduce_concat)):
            if not edges:
                raise GenotypeError(f"{cell} cell has no edges")
            targets = sorted({e.node for e in edges})
            n = nodes if nodes is not None else len(targets)
            if targets != list(range(2, 2 + n)):
                raise GenotypeError(f"{cell} cell feeds nodes {targets}; expected every node of 2..{n + 1} "
                                    f"({n} intermediate nodes)")
            for e in edges:
                if not 0 <= e.source < e.node:
                    raise GenotypeError(f"{cell} edge into node {e.node} comes from node {e.source}; "
                                        f"sources must be earlier nodes (0..{e.node - 1})")
            pairs = [(e.node, e.source) for e in edges]
            if len(set(pairs)) != len(pairs):
                raise GenotypeError(f"{cell} cell connects the same two nodes twice")
            if not concat or any(not 2 <= c < 2 + n for c in concat):
                raise GenotypeError(f"{cell}_concat {list(concat)} must name intermediate nodes 2..{n + 1}")
            for e in edges:
                try:
                    candidate = e.candidate
                except BionasError as err:
                    raise GenotypeError(f"{cell} edge {e.source}->{e.node}: {err}") from None
                if candidate.rule != "bp" or has_weights(candidate.op):  # a rule on a weightless op: refused
                    try:
                        check_pair(candidate.op, candidate.rule)
                    except ConfigError as err:
                        raise GenotypeError(f"{cell} edge {e.source}->{e.node}: {err}") from None
                if space is not None and candidate not in space.candidates:
                    raise GenotypeError(f"{cell} edge {e.source}->{e.node} uses {candidate}, which search space "
                                        f"{space.name!r} does not offer")
        return self

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def edges(es):
            return [{"node": e.node, "source": e.source, "op": e.op, "rule": e.rule} for e in es]
        out = {"format": FORMAT, "space": self.space, "normal": edges(self.normal),
               "normal_concat": list(self.normal_concat), "reduce": edges(self.reduce),
               "reduce_concat": list(self.reduce_concat)}
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise GenotypeError(f"not a bionas genotype (expected \"format\": \"{FORMAT}\")")
        try:
            def edges(key):
                return tuple(Edge(int(e["node"]), int(e["source"]), str(e["op"]), str(e.get("rule", "bp")))
                             for e in data[key])
            return cls(edges("normal"), tuple(int(c) for c in data["normal_concat"]), edges("reduce"),
                       tuple(int(c) for c in data["reduce_concat"]), str(data.get("space", "")),
                       data.get("weights"))
        except (KeyError, TypeError, ValueError) as err:
            raise GenotypeError(f"malformed genotype entry ({type(err).__name__}: {err}); each edge needs "
                                f"node, source, op and rule") from None

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    # --- DARTS literal --------------------------------------------------------------------------
    def to_darts_literal(self) -> str:
        def flat(es):
            return "[" + ", ".join(f"('{e.op}|{e.rule}', {e.source})" for e in es) + "]"
        return (f"Genotype(normal={flat(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={flat(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


def _edges_from_flat(pairs, cell: str) -> tuple[Edge, ...]:
    if not isinstance(pairs, list) or len(pairs) % 2:
        raise GenotypeError(f"{cell} must be a list of (op, source) pairs, two per node")
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int)):
            raise GenotypeError(f"{cell}[{i}] must be ('op' or 'op|rule', source), got {pair!r}")
        try:
            candidate = Candidate.parse(pair[0])
        except BionasError as err:
            raise GenotypeError(f"{cell}[{i}]: {err}") from None
        out.append(Edge(2 + i // 2, pair[1], candidate.op, candidate.rule))
    return tuple(out)


MAX_LITERAL_ITEMS = 10_000  # a genotype's lists hold a few dozen entries


def _literal(node: ast.expr, what: str):
    """A literal value, or ``range(a, b)`` expanded to a list; anything else is refused, and so
    is a ``range`` longer than ``MAX_LITERAL_ITEMS`` (checked before it is expanded)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 2:
        bounds = [_literal(a, what) for a in node.args]
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            raise GenotypeError(f"{what}: range() takes integer literals")
        if len(range(*bounds)) > MAX_LITERAL_ITEMS:
            raise GenotypeError(f"{what}: range{tuple(bounds)} has {len(range(*bounds))} items; a cell has a "
                                f"few nodes")
        return list(range(*bounds))
    if len(ast.dump(node)) > 100 * MAX_LITERAL_ITEMS:
        raise GenotypeError(f"{what} is far too long for a genotype")
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise GenotypeError(f"{what} must be a literal, got {ast.unparse(node)[:80]!r}") from None


def parse_darts_literal(text: str, space: str = "") -> Genotype:
    """Parse ``Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)`` safely."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise GenotypeError(f"genotype literal does not parse: {err.msg} (line {err.lineno})") from None
    func = tree.func if isinstance(tree, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "Genotype":
        raise GenotypeError("expected a literal of the form Genotype(normal=[...], normal_concat=[...], "
                            "reduce=[...], reduce_concat=[...])")
    fields = ["normal", "normal_concat", "reduce", "reduce_concat"]
    values = dict(zip(fields, (_literal(a, fields[i]) for i, a in enumerate(tree.args))))
    for kw in tree.keywords:
        if kw.arg not in fields:
            raise GenotypeError(f"unknown Genotype field {kw.arg!r}; expected {', '.join(fields)}")
        values[kw.arg] = _literal(kw.value, kw.arg)
    missing = [f for f in fields if f not in values]
    if missing:
        raise GenotypeError(f"genotype literal lacks {', '.join(missing)}")
    for key in ("normal_concat", "reduce_concat"):
        if not isinstance(values[key], list) or not all(isinstance(c, int) for c in values[key]):
            raise GenotypeError(f"{key} must be a list of node numbers or range(a, b)")
    return Genotype(_edges_from_flat(values["normal"], "normal"), tuple(values["normal_concat"]),
                    _edges_from_flat(values["reduce"], "reduce"), tuple(values["reduce_concat"]), space)


def _named_space(name: str):
    """The packaged search space a genotype names, or None for a name that is not one (a space
    file elsewhere, a space since renamed): those genotypes get the structural checks only."""
    from bionas.space import load_space, spaces_dir

    return load_space(name) if (spaces_dir() / f"{name}.yaml").is_file() else None


def load_genotype(path: str | Path, space=None) -> Genotype:
    """Read a JSON genotype or a file holding a DARTS ``Genotype(...)`` literal; validate it
    (against ``space`` when given, else against the packaged space the genotype names)."""
    from bionas.io import read_text_file

    path = Path(path)
    try:
        text = read_text_file(path, "genotype", "genotype.json or a DARTS Genotype(...) literal")
    except ConfigError as err:
        raise GenotypeError(str(err)) from None
    try:
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise GenotypeError(f"not valid JSON: {err.msg} at line {err.lineno}") from None
            genotype = Genotype.from_dict(data)
        else:
            genotype = parse_darts_literal(text, space=space.name if space is not None else "")
        if space is None and genotype.space:
            space = _named_space(genotype.space)
        return genotype.validate(space)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


def edge_index(nodes: int) -> list[tuple[int, int]]:
    """``(node, source)`` of each supernet edge in order: node 2's sources 0, 1, then node 3's 0, 1, 2, ..."""
    return [(2 + i, j) for i in range(nodes) for j in range(2 + i)]


def derive_cell(weights: np.ndarray, candidates: Sequence[Candidate], nodes: int,
                edges_per_node: int = 2) -> tuple[Edge, ...]:
    """DARTS derivation (Liu et al. 2019, section 2.4) over (op, rule) candidates.

    ``weights``: (edges, candidates) mixing weights (softmax of the logits). For each node keep
    the ``edges_per_node`` incoming edges whose strongest non-``none`` candidate is strongest,
    then give each kept edge that best candidate -- op and rule together. Ties go to the earlier
    edge / candidate.
    """
    weights = np.asarray(weights, dtype=np.float64)
    pairs = edge_index(nodes)
    if weights.shape != (len(pairs), len(candidates)):
        raise ConfigError(f"mixing weights have shape {weights.shape}; {nodes} nodes and {len(candidates)} "
                          f"candidates need {(len(pairs), len(candidates))}")
    usable = np.array([c.op != "none" for c in candidates])
    if not usable.any():
        raise ConfigError("every candidate is 'none': no genotype can be derived")
    masked = np.where(usable[None, :], weights, -np.inf)
    out = []
    for node in range(2, 2 + nodes):
        rows = [k for k, (n, _) in enumerate(pairs) if n == node]
        strength = masked[rows].max(axis=1)
        keep = sorted(sorted(range(len(rows)), key=lambda r: -strength[r])[:edges_per_node])  # stable
        for r in keep:
            k = rows[r]
            best = int(np.argmax(masked[k]))
            out.append(Edge(node, pairs[k][1], candidates[best].op, candidates[best].rule))
    return tuple(out)


def derive_genotype(space, weights_normal: np.ndarray, weights_reduce: np.ndarray) -> Genotype:
    """The genotype of a search state: both cells derived, all nodes concatenated, and the
    final mixing weights recorded."""
    nodes = space.supernet.nodes
    concat = tuple(range(2, 2 + nodes))
    weights = {"candidates": [str(c) for c in space.candidates],
               "normal": np.asarray(weights_normal).round(6).tolist(),
               "reduce": np.asarray(weights_reduce).round(6).tolist()}
    return Genotype(derive_cell(weights_normal, space.candidates, nodes), concat,
                    derive_cell(weights_reduce, space.candidates, nodes), concat, space.name, weights).validate(space)
