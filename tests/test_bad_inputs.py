"""A corpus of bad inputs, per family and command: each is exit status 2, one error line that
names the offending file or option, no traceback, and nothing new in ``--out``."""
from pathlib import Path

import pytest

from bionas.cli import main


def _binary(tmp: Path) -> Path:
    path = tmp / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # what torch.save writes: a zip archive
    return path


def _text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


CASES = [
    # family 1: values of the wrong type, from flags and --set
    ("types", lambda t: ["search", "--set", "lr=abc"], "lr must be a number"),
    ("types", lambda t: ["train", "--genotype", "darts_v2", "--set", "momentum=nan"], "momentum must be a finite"),
    ("types", lambda t: ["hebbian", "--set", "seed=1.5"], "seed must be an integer"),
    ("types", lambda t: ["attack", "--checkpoint", "x.pt", "--set", "eps=abc"], "eps must be a number"),
    ("types", lambda t: ["search", "--device", "gpu"], "unknown device 'gpu'"),
    # family 2: unreadable files where text is expected, literals that expand without bound
    ("files", lambda t: ["train", "--genotype", str(_binary(t))], "checkpoint.pt is not UTF-8 text"),
    ("files", lambda t: ["train", "--genotype", str(t)], "is a directory; give the genotype.json"),
    ("files", lambda t: ["search", "--space", str(_binary(t))], "checkpoint.pt is not UTF-8 text"),
    ("files", lambda t: ["search", "--config", str(_binary(t))], "checkpoint.pt is not UTF-8 text"),
    ("files", lambda t: ["train", "--config", str(_binary(t)), "--genotype", "darts_v2"], "is not UTF-8 text"),
    ("files", lambda t: ["hebbian", "--config", str(_binary(t))], "is not UTF-8 text"),
    ("files", lambda t: ["train", "--genotype", str(_text(t, "g.txt", "Genotype(normal={[2]: 1}, normal_concat=[2], "
                                                                   "reduce=[], reduce_concat=[2])"))],
     "g.txt: normal must be a literal"),
    ("files", lambda t: ["train", "--genotype", str(_text(t, "g.txt", "Genotype(normal=[], normal_concat="
                                                                   "range(2, 10000000000), reduce=[], "
                                                                   "reduce_concat=[2])"))],
     "g.txt: normal_concat: range(2, 10000000000) has 9999999998 items"),
    ("files", lambda t: ["train", "--genotype", str(_text(t, "g.json", "{not json"))], "g.json: not valid JSON"),
    ("files", lambda t: ["search", "--space", str(_text(t, "s.yaml", "candidates: [unclosed"))], "is not valid YAML"),
    ("files", lambda t: ["analyze", str(_binary(t).parent / "nothing_here")], "is not a run folder"),
    ("files", lambda t: ["attack", "--checkpoint", str(_binary(t))], "checkpoint.pt"),
    ("files", lambda t: ["attack", "--checkpoint", str(_text(t, "empty.pt", ""))], "empty.pt"),
    ("files", lambda t: ["hebbian", "--preset", str(_text(t, "x", ""))], "unknown hebbian preset"),
    # family 5: an --out that cannot be written, found before any work
    ("out", lambda t: ["hebbian", "--out", str(_text(t, "a_file", ""))], "a_file"),
    ("out", lambda t: ["attack", "--checkpoint", "x.pt", "--out", str(_text(t, "a_file", ""))], "a_file"),
    ("out", lambda t: ["quickstart", "--out", str(_text(t, "a_file", ""))], "a_file"),
    # ... and an error found late (after data and supernet) still leaves no config.yaml behind
    ("out", lambda t: ["search", "--preset", "smoke", "--space", str(_text(t, "s.yaml", "name: s\ncandidates: {none: []}\n"))],
     "every candidate is 'none'"),
    ("out", lambda t: ["search", "--out", str(_text(t, "a_file", ""))], "a_file"),
    ("out", lambda t: ["train", "--genotype", "darts_v2", "--out", str(_text(t, "a_file", ""))], "a_file"),
]


@pytest.mark.parametrize("family,argv,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_naming_it(family, argv, message, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = argv(inputs)
    out = tmp_path / "out"
    if "--out" not in args:
        args += ["--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bionas: error: ") and message in err[0], err
    assert "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_stale_temporaries_are_removed_and_files_follow_the_umask(tmp_path):
    import os

    from bionas.io import atomic_open, check_output_dir

    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"  # not hidden: not ours
    keep.write_text("x")
    check_output_dir(tmp_path)
    assert not stale.exists() and keep.exists()
    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "results.json") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    import bionas.search as search_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_run, "run_search", interrupted)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(["search", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bionas: interrupted; the last checkpoint in {tmp_path} is kept; continue with the same "
                   f"command and --resume"]


def test_threads_flag_is_checked_and_applied(tmp_path, capsys, monkeypatch):
    import torch

    import bionas.search as search

    seen = {}
    monkeypatch.setattr(search, "run_search", lambda config, **kw: seen.setdefault("threads", torch.get_num_threads())
                        and (_ for _ in ()).throw(KeyboardInterrupt))
    before = torch.get_num_threads()
    try:
        assert main(["search", "--threads", "1", "--out", str(tmp_path)]) == 130 and seen["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert main(["search", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_a_genotype_giving_a_rule_to_a_weightless_op_is_refused(tmp_path, capsys):
    edges = ", ".join(["('sep_conv_3x3|fa', 0), ('sep_conv_3x3|fa', 1)"] * 4)
    bad = f"Genotype(normal=[('max_pool_3x3|hebbian', 0), {edges[edges.index('(', 1):]}], normal_concat=[2, 3, 4, 5], " \
          f"reduce=[{edges}], reduce_concat=[2, 3, 4, 5])"
    path = _text(tmp_path, "g.txt", bad)
    assert main(["train", "--genotype", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bionas: error: {path}: normal edge 0->2: op 'max_pool_3x3' has no weights, so rule 'hebbian' "
                   f"would do nothing; give the bare op ('max_pool_3x3' in a genotype, 'max_pool_3x3: []' in a "
                   f"space file)"]


def test_hebbian_resume_with_nothing_to_resume_is_refused(tmp_path, capsys):
    assert main(["hebbian", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_genotype_is_checked_against_the_space_it_names(tmp_path, capsys):
    import json

    from bionas.models.genotypes import resolve_genotype

    data = resolve_genotype("darts_v2").to_dict()
    data["normal"][0]["rule"] = "usf"
    data["space"] = "darts"  # which offers no usf
    path = _text(tmp_path, "g.json", json.dumps(data))
    assert main(["train", "--genotype", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "which search space 'darts' does not offer" in err
