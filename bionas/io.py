"""Atomic writes: a result or checkpoint file is either the old one or the complete new one.

Each writer writes to a temporary file in the same directory, flushes it to disk and renames it
over the target (``os.replace`` is atomic on POSIX and Windows), so a run killed mid-write never
leaves a truncated file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMPORARY_GLOB = ".*.tmp"  # the temporary siblings atomic_open writes


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    The file ends with the permissions a plain ``open`` would give it (0666 less the umask;
    ``mkstemp`` alone would leave 0600). A process killed mid-write leaves the temporary
    sibling behind; :func:`remove_stale_temporaries` clears them when a run (re)starts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def save_csv(frame, path: str | Path) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_open(path) as fh:
        frame.to_csv(fh, index=False)


def save_torch(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")


def check_output_dir(out: str | Path) -> Path:
    """``out``, checked before any work to be a directory this process can write or create, so
    that a run never loads data or trains for hours to fail at its first write; nothing is
    created here. A one-line error names the problem (a file in the way, no permission)."""
    from bionas.errors import ConfigError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose another --out")
    existing = out
    while not existing.exists():  # the nearest folder that exists must let us create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written: no permission in {existing}; choose another --out")
    remove_stale_temporaries(out)
    return out


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Delete what killed writes left in ``out`` (``.NAME.XXXX.tmp``); returns what was removed.
    Called where every command starts (:func:`check_output_dir`), before anything writes."""
    out = Path(out)
    removed = [p for p in out.glob(TEMPORARY_GLOB) if p.is_file()] if out.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


MAX_TEXT_BYTES = 10 * 2**20  # genotypes, spaces and configs are a few kB


def read_text_file(path: str | Path, what: str, expected: str) -> str:
    """The UTF-8 text of ``path``, or a one-line :class:`~bionas.errors.ConfigError` naming the
    file and ``what`` it should have been (e.g. a checkpoint passed where a genotype goes)."""
    from bionas.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give the {expected} inside it")
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ConfigError(f"{what} file {path} is {path.stat().st_size / 2**20:.0f} MB, not a {expected}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        hint = " (it looks like a torch checkpoint)" if data[:2] == b"PK" or data[:1] == b"\x80" else ""
        raise ConfigError(f"{what} file {path} is not UTF-8 text{hint}; give a {expected}") from None

