"""Atomic writes: a failed write leaves the previous file exactly as it was, and no temp files."""
import pytest
import torch

from bionas.io import atomic_open, save_json, save_torch


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "results.json"
    save_json({"run": 1}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path) as fh:
            fh.write('{"run": 2, "trunc')  # half a file, then the writer dies
            raise RuntimeError("disk full")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_save_torch_round_trip_and_creates_parents(tmp_path):
    path = tmp_path / "deep" / "ckpt.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_torch(state, path)
    loaded = torch.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])
