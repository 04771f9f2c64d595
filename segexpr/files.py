"""Writing files without losing a user's: the one existence check and the atomic writes every writer uses.

Standard library only, on the ground floor: the edge (``segexpr.io``, the CLI, scripts) and the dataset exporter
in ``segexpr.data`` (which must not import the edge) share it. ``segexpr.io`` re-exports it.

* :func:`refuse_existing` -- an existing file or a non-empty folder among the targets is an error naming it,
  unless ``overwrite``; checked before any work, so nothing is lost and no time is wasted.
* :func:`atomic_path` -- a temporary file beside the target, renamed onto it when the block succeeds: a reader
  (or a crash) never sees half a file.
* :func:`write_text` / :func:`write_bytes` -- the two common cases of :func:`atomic_path`.
* :func:`staged_folder` -- a whole folder written beside the target, then moved into place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["refuse_existing", "atomic_path", "write_text", "write_bytes", "staged_folder"]

#: How many existing paths an error names before it says "and N more".
_NAMED = 3


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _in_the_way(path: Path) -> bool:
    """A file (or link) is in the way; a folder only when it holds something (an empty one loses nothing)."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def refuse_existing(paths: Iterable[str | os.PathLike], *, overwrite: bool = False,
                    option: str = "--overwrite") -> None:
    """Raise :class:`FileExistsError` naming the ``paths`` that exist (files, or folders that are not empty),
    unless ``overwrite``. ``option`` is the flag the message tells the user to pass."""
    if overwrite:
        return
    existing = [f"{p} (a folder that is not empty)" if p.is_dir() else str(p) for p in map(Path, paths)
                if _in_the_way(p)]
    if existing:
        more = f" (and {len(existing) - _NAMED} more)" if len(existing) > _NAMED else ""
        raise FileExistsError(f"{', '.join(existing[:_NAMED])}{more} exist(s) and would be replaced; pass {option} "
                              "to replace (nothing was written)")


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` onto ``path``; without ``overwrite`` a file that appeared meanwhile still wins."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: no window between check and rename
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while it was being written; pass --overwrite to replace it") from None
    except OSError:  # a file system without hard links: check, then rename
        refuse_existing([path])
        os.replace(tmp, path)
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (same suffix, so writers that pick the format from it work);
    when the block ends without an error it is renamed onto ``path``, else removed. An existing ``path`` is an
    error (before the block runs) unless ``overwrite``."""
    path = Path(path)
    refuse_existing([path], overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 would make the result private, unlike a plain write
    try:
        yield tmp
        _publish(tmp, path, overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; an existing ``path`` is an error unless ``overwrite``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; an existing ``path`` is an error unless ``overwrite``."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def _merge_into(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` to the same place under ``out`` (each an atomic rename)."""
    for source in sorted(staging.rglob("*")):
        if source.is_dir():
            continue
        target = out / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; when the block succeeds its contents become ``out``.

    ``out`` must be missing or empty unless ``overwrite`` (a non-empty folder is an error naming it, before the
    block runs). A missing or empty ``out`` is replaced by the staging folder in one rename; with ``overwrite``
    each staged file replaces its namesake in ``out`` and files the block did not write are left alone. On an
    error the staging folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; the output must be a folder")
    refuse_existing([out], overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()  # the umask's permissions (mkdtemp's 0700 would become out's)
    try:
        yield staging
        if out.is_dir() and any(out.iterdir()):
            refuse_existing([out], overwrite=overwrite)  # filled meanwhile: still the user's
            _merge_into(staging, out)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
