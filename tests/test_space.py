"""Search spaces as data: the shipped spaces, and one clear error per kind of bad file."""
import tomllib
from pathlib import Path

import pytest
from torch import nn

from bionas import rules
from bionas.candidate import Candidate
from bionas.errors import ConfigError, UnknownNameError
from bionas.space import load_space, space_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_darts_space_is_the_eight_ops_with_backprop():
    space = load_space("darts")
    assert [c.op for c in space.candidates] == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                               "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    assert {c.rule for c in space.candidates} == {"bp"}
    assert space.supernet.channels == 16 and space.supernet.cells == 5 and space.supernet.nodes == 4
    assert space.supernet.edges_per_cell == 14 and space.supernet.reduction_cells == (1, 3)


def test_bionas_space_matches_section_3_2_of_the_paper():
    space = load_space("bionas")
    by_op = {}
    for c in space.candidates:
        by_op.setdefault(c.op, []).append(c.rule)
    feedback = ["fa", "usf", "brsf", "frsf"]
    assert by_op == {"none": ["bp"], "max_pool_3x3": ["bp"], "avg_pool_3x3": ["bp"],
                     "skip_connect": ["usf", "brsf", "frsf"], "sep_conv_3x3": feedback, "sep_conv_5x5": feedback,
                     "dil_conv_3x3": feedback, "dil_conv_5x5": feedback}
    assert len(space) == 22
    assert load_space(REPO / "search_spaces" / "bionas.yaml").candidates == space.candidates  # by path too
    assert space_from_dict(space.to_dict()).candidates == space.candidates  # round trip


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,error,message", [
    ("name: x\ncandidates: {conv_7x7: [bp]}", UnknownNameError, "unknown op 'conv_7x7'"),
    ("name: x\ncandidates: {sep_conv_3x3: [fa, hebbo]}", UnknownNameError, "op 'sep_conv_3x3' lists unknown rule 'hebbo'"),
    ("name: x\ncandidates: {max_pool_3x3: [usf]}", ConfigError, "op 'max_pool_3x3' has no weights, so rule 'usf'"),
    ("name: x\ncandidates: {sep_conv_3x3: []}", ConfigError, "op 'sep_conv_3x3' has weights; list the rules"),
    ("name: x\ncandidates: {sep_conv_3x3: [fa, fa]}", ConfigError, "lists a candidate twice"),
    ("name: x\ncandidates: {sep_conv_3x3: fa}", ConfigError, "'sep_conv_3x3' must list rule names"),
    ("name: x\ncandidate: {none: []}", ConfigError, "unknown key(s) candidate"),
    ("name: x\ncandidates: {none: []}\nsupernet: {chanels: 8}", ConfigError, "unknown supernet key(s) chanels"),
    ("name: x\ncandidates: {none: []}\nsupernet: {cells: 0}", ConfigError, "supernet.cells must be a positive"),
    ("candidates: {none: []}", ConfigError, "needs a 'name'"),
    ("name: x\ncandidates: [none", ConfigError, "is not valid YAML"),
])
def test_bad_space_files_name_the_entry(tmp_path, text, error, message):
    with pytest.raises(error) as err:
        load_space(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(UnknownNameError, match="unknown search space 'nas201'; choose from .*bionas.*darts"):
        load_space("nas201")
    with pytest.raises(ConfigError, match="does not exist"):
        load_space("no/such/space.yaml")


def test_rule_that_cannot_learn_an_ops_layers_is_rejected(tmp_path):
    class LinearOnly(rules.FeedbackRule):
        name = "test_linear_only"
        layer_types = (nn.Linear,)

        def feedback(self, weight):
            return weight.detach()

    rules.RULES.register("test_linear_only")(LinearOnly)
    try:
        with pytest.raises(ConfigError, match="rule 'test_linear_only' cannot learn the Conv2d layers of op 'sep_conv_3x3'"):
            load_space(write(tmp_path, "name: x\ncandidates: {sep_conv_3x3: [test_linear_only]}"))
    finally:
        rules.RULES.unregister("test_linear_only")


def test_every_package_and_space_file_ships_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bionas").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert config["package-dir"]["bionas.search_spaces"] == "search_spaces"
    assert "*.yaml" in config["package-data"]["bionas.search_spaces"]


def test_candidate_order_is_file_order():
    space = space_from_dict({"name": "t", "candidates": {"dil_conv_3x3": ["usf", "fa"], "none": []}})
    assert space.candidates == (Candidate("dil_conv_3x3", "usf"), Candidate("dil_conv_3x3", "fa"), Candidate("none"))
