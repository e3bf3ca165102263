"""Genotypes: JSON and DARTS literals, validation against spaces, DARTS-style derivation."""
import json
import re

import numpy as np
import pytest

from bionas.candidate import Candidate
from bionas.genotype import (Edge, Genotype, GenotypeError, derive_cell, derive_genotype, edge_index, load_genotype,
                             parse_darts_literal)
from bionas.space import load_space

# DARTS V2 as published by Liu et al. (genotypes.py of the DARTS repository)
DARTS_V2 = """Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5],
reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0),
('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))"""


def test_darts_v2_literal_parses_with_bp_everywhere():
    g = parse_darts_literal(DARTS_V2).validate(load_space("darts"))
    assert g.normal[0] == Edge(2, 0, "sep_conv_3x3", "bp")
    assert g.normal[-1] == Edge(5, 2, "dil_conv_3x3", "bp")
    assert g.reduce_concat == (2, 3, 4, 5) and len(g.reduce) == 8


def test_op_bar_rule_carries_the_rule_and_space_membership_is_checked():
    text = DARTS_V2.replace("('sep_conv_3x3', 1), ('sep_conv_3x3', 0)", "('sep_conv_3x3|usf', 1), ('sep_conv_3x3|fa', 0)", 1)
    g = parse_darts_literal(text)
    assert g.normal[1] == Edge(2, 1, "sep_conv_3x3", "usf") and g.normal[2] == Edge(3, 0, "sep_conv_3x3", "fa")
    with pytest.raises(GenotypeError, match=re.escape("uses sep_conv_3x3|usf, which search space 'darts' does not offer")):
        g.validate(load_space("darts"))
    with pytest.raises(GenotypeError, match=re.escape("sep_conv_3x3|bp, which search space 'bionas' does not offer")):
        g.validate(load_space("bionas"))  # the bionas space has no backprop convolutions


@pytest.mark.parametrize("text,message", [
    ("__import__('os').system('touch /tmp/bionas_pwned')", "expected a literal of the form Genotype"),
    ("Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=[2], reduce=[], reduce_concat=[2])", "normal must be a literal"),
    ("Genotype(normal=open('x'), normal_concat=[2], reduce=[], reduce_concat=[2])", "normal must be a literal"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[], reduce_concat=[2])", "two per node"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=1)", "unknown Genotype field 'extra'"),
    ("Genotype(normal=[], normal_concat=[2])", "lacks reduce, reduce_concat"),
    ("Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[], reduce_concat=[2])", "unknown op 'conv_9x9'"),
    ("Genotype(normal=[('sep_conv_3x3|zz', 0), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[], reduce_concat=[2])", "unknown learning rule 'zz'"),
    ("Genotype(normal=[(0, 'sep_conv_3x3'), ('sep_conv_3x3', 1)], normal_concat=[2], reduce=[], reduce_concat=[2])", "normal[0] must be"),
    ("Genotype(normal=[", "does not parse"),
])
def test_bad_literals_are_refused_without_running_anything(text, message, tmp_path):
    with pytest.raises(GenotypeError, match=re.escape(message)):
        parse_darts_literal(text)
    import os
    assert not os.path.exists("/tmp/bionas_pwned")


@pytest.mark.parametrize("mutate,message", [
    (lambda g: Genotype(g.normal[:-2], g.normal_concat, g.reduce, g.reduce_concat), "feeds nodes \\[2, 3, 4\\]"),
    (lambda g: Genotype(g.normal[:-1] + (Edge(5, 5, "sep_conv_3x3"),), g.normal_concat, g.reduce, g.reduce_concat),
     "comes from node 5"),
    (lambda g: Genotype(g.normal[:-1] + (Edge(5, 0, "skip_connect"),), g.normal_concat, g.reduce, g.reduce_concat),
     "connects the same two nodes twice"),
    (lambda g: Genotype(g.normal, (2, 3, 6), g.reduce, g.reduce_concat), "normal_concat \\[2, 3, 6\\]"),
])
def test_structural_validation(mutate, message):
    g = parse_darts_literal(DARTS_V2)
    with pytest.raises(GenotypeError, match=message):
        mutate(g).validate(load_space("darts"))


def test_json_round_trip_and_file_errors(tmp_path):
    space = load_space("bionas")
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(len(space)), size=14)
    g = derive_genotype(space, w, w[::-1])
    path = tmp_path / "genotype.json"
    g.save(path)
    data = json.loads(path.read_text())
    assert data["space"] == "bionas" and set(data["normal"][0]) == {"node", "source", "op", "rule"}
    assert np.allclose(data["weights"]["normal"], w, atol=1e-6) and data["weights"]["candidates"][0] == "none|bp"
    again = load_genotype(path, space)
    assert again == g and again.weights == g.weights
    literal = tmp_path / "genotype.txt"
    literal.write_text(g.to_darts_literal())
    assert load_genotype(literal, space) == Genotype(g.normal, g.normal_concat, g.reduce, g.reduce_concat, "bionas")
    with pytest.raises(GenotypeError, match="does not exist"):
        load_genotype(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{\"format\": ")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{\"normal\": []}")
    with pytest.raises(GenotypeError, match="not a bionas genotype"):
        load_genotype(tmp_path / "other.json")
    data["normal"][0].pop("source")
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match="malformed genotype entry"):
        load_genotype(tmp_path / "broken.json")


def test_derive_cell_on_a_hand_worked_example():
    """2 nodes (edges 0->2, 1->2, 0->3, 1->3, 2->3), candidates none / pool / sep|fa / sep|usf."""
    cands = [Candidate("none"), Candidate("max_pool_3x3"), Candidate("sep_conv_3x3", "fa"),
             Candidate("sep_conv_3x3", "usf")]
    w = np.array([
        [0.70, 0.10, 0.15, 0.05],  # 0->2: 'none' wins but is ignored; strength 0.15 (sep|fa)
        [0.10, 0.20, 0.30, 0.40],  # 1->2: strength 0.40 (sep|usf)
        [0.05, 0.50, 0.25, 0.20],  # 0->3: strength 0.50 (pool)
        [0.40, 0.20, 0.20, 0.20],  # 1->3: strength 0.20, ties go to the earlier candidate
        [0.10, 0.30, 0.30, 0.30],  # 2->3: strength 0.30
    ])
    assert edge_index(2) == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert derive_cell(w, cands, nodes=2) == (
        Edge(2, 0, "sep_conv_3x3", "fa"), Edge(2, 1, "sep_conv_3x3", "usf"),  # node 2 has only two inputs
        Edge(3, 0, "max_pool_3x3", "bp"), Edge(3, 2, "max_pool_3x3", "bp"),  # 0.50 and 0.30 beat 0.20
    )


def test_derive_genotype_agrees_with_a_loop_implementation_on_random_weights():
    space = load_space("bionas")
    rng = np.random.default_rng(1)
    names = [c.op for c in space.candidates]
    for _ in range(20):
        w = rng.dirichlet(np.ones(len(space)) * 0.3, size=14)
        expected, k = [], 0
        for node in range(2, 6):
            scored = []
            for source in range(node):
                row = w[k]
                k += 1
                best = max((i for i in range(len(row)) if names[i] != "none"), key=lambda i: row[i])
                scored.append((row[best], source, best))
            top = sorted(scored, key=lambda s: -s[0])[:2]
            for _, source, best in sorted(top, key=lambda s: s[1]):
                expected.append(Edge(node, source, space.candidates[best].op, space.candidates[best].rule))
        g = derive_genotype(space, w, w)
        assert list(g.normal) == expected and g.normal_concat == (2, 3, 4, 5)


def test_derive_rejects_wrong_weight_shapes():
    space = load_space("darts")
    with pytest.raises(Exception, match="need \\(14, 8\\)"):
        derive_genotype(space, np.ones((14, 7)), np.ones((14, 8)))
