"""On-disk model registry: versioned artifact directories with an atomic `current` pointer.

Layout under ``root`` (one registry per model kind, e.g. ``var/registry/churn``)::

    v0001-<fingerprint>/     weights, config, feature spec, metrics.json, meta.json
    v0002-<fingerprint>/
    current                  a text file naming the current version directory
    .last_number             the highest version number given out so far

Publishing writes the new directory under a temporary name, renames it into place, then replaces
``current`` with os.replace (atomic on POSIX), so a reader never sees a half-written version.
Workers poll :meth:`Registry.current_version` and reload when it changes (hot reload).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

CURRENT = "current"
LAST_NUMBER = ".last_number"  # the highest version number ever given out: a deleted version's name is not reused
KINDS = ("churn", "recs", "recs_index")  # the registries under one root, as the worker reads them
# the meta fields that say what a version is, shown by `tidewater models list`
HEADLINE = ("dataset", "test_auc", "valid_ndcg@10", "model_version", "items", "n_users", "users")


class RegistryEmpty(LookupError):
    """No version has been published yet (run the matching `tidewater train ...` first)."""


class Registry:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _is_version_dir(p))

    def current_version(self) -> str | None:
        """The version ``current`` names; ``ValueError`` when it names anything but one of this registry's version
        directories (a path such as ``/etc`` or ``../elsewhere``, a symlink): the pointer was joined to the root
        as written, so whoever could write it chose any directory for every worker to load (found by review)."""
        try:
            name = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        if name and not _is_version_dir(self.root / name, name):
            raise ValueError(f"{self.root / CURRENT} names {name[:200]!r}, which is not a version directory of "
                             f"this registry (one of: {', '.join(self.versions()[-5:]) or 'none'})")
        return name or None

    def current_or_none(self) -> str | None:
        """``current_version``, with a pointer naming no version read as none: for the commands that list or note
        versions (`models list` warns about such a pointer itself)."""
        try:
            return self.current_version()
        except ValueError:
            return None

    def current_path(self) -> Path:
        name = self.current_version()
        if name is None:
            raise RegistryEmpty(f"no current version in {self.root}")
        return self.root / name

    def path(self, version: str) -> Path:
        return self.root / version

    def publish(
        self,
        write: Callable[[Path], None],
        *,
        fingerprint: str,
        meta: dict[str, Any] | None = None,
        make_current: bool = True,
    ) -> str:
        """Create the next version: ``write(tmpdir)`` fills it, then it is renamed into place. Publishers running at
        once each get their own number: it is taken, and the version renamed into place and made current, under a
        lock on the registry (two publishers used to pick the same number)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep workers running as another user out
        try:
            write(tmp)
            with self.lock():
                number = self._next_number()
                version = f"v{number:04d}-{fingerprint[:8]}"
                info = {"version": version, "fingerprint": fingerprint, "created_unix": time.time()}
                info.update(meta or {})
                (tmp / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
                _sync_tree(tmp)  # on disk before it is named: after a power loss, `current` never names torn files
                os.rename(tmp, self.root / version)
                _write_atomically(self.root / LAST_NUMBER, f"{number}\n")  # also syncs the directory
                if make_current:
                    self.set_current(version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def _next_number(self) -> int:
        """One above every number given out so far, deleted versions included. A name stands for one artifact:
        outputs carry it as ``model_version``, and a worker reloads only when the name in ``current`` changes."""
        numbers = [int(v[1:5]) for v in self.versions() if v[1:5].isdigit()]
        try:
            numbers.append(int((self.root / LAST_NUMBER).read_text()))
        except (FileNotFoundError, ValueError):  # a registry from before the file, or a torn write: the versions
            pass
        return 1 + max(numbers, default=0)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The registry's publish lock (an flock on ``.publish.lock``): numbering a version, renaming it into place
        and moving ``current`` happen under it, and so does a rollback (`tidewater models use`)."""
        import fcntl

        with open(self.root / ".publish.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def set_current(self, version: str) -> None:
        if not _is_version_dir(self.root / version, version):
            raise FileNotFoundError(f"version {version} not in {self.root}")
        _write_atomically(self.root / CURRENT, version + "\n")

    def meta(self, version: str | None = None) -> dict[str, Any]:
        version = version or self.current_version()
        if version is None:
            raise RegistryEmpty(f"no current version in {self.root}")
        return json.loads((self.root / version / "meta.json").read_text())


def _is_version_dir(path: Path, name: str | None = None) -> bool:
    """A version directory of the registry: a real directory (no symlink) named ``v...`` right under the root;
    ``name``, when given, is the name asked for, which must be exactly that (no path)."""
    if name is not None and (name != path.name or "/" in name or "\\" in name):
        return False
    return path.name.startswith("v") and path.is_dir() and not path.is_symlink()


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never part of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.lstrip('.')}-", dir=path.parent)  # hidden until named
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp's 0600: readable by workers running as another user
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file under ``root``, then the directories (a rename is only as durable as what it names)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(Path(directory))


def serving_index(indexes: Registry, model_version: str | None) -> str | None:
    """The current version of ``indexes`` (``<root>/recs_index``) if it was built for ``model_version``, else None:
    an index built for another recs model (or with unreadable metadata) does not serve, the model's own does."""
    try:  # a pointer naming no version of the registry (ValueError) too: the model serves its own index
        index = indexes.current_version()
        if index is None or model_version is None:
            return None
        return index if indexes.meta(index).get("model_version") == model_version else None
    except (OSError, ValueError):
        return None


def resolve_version(registry: Registry, name: str) -> str:
    """A version named in full (``v0002-1a2b3c4d``) or by its number (``v0002``, ``2``)."""
    versions = registry.versions()
    if name in versions:
        return name
    digits = name[1:] if name[:1] == "v" else name
    if digits.isascii() and digits.isdigit():  # not "²", which isdigit() takes and int() refuses
        matches = [v for v in versions if v[1:5].isdigit() and int(v[1:5]) == int(digits)]
        if len(matches) == 1:
            return matches[0]
    known = ", ".join(versions) or "none"
    raise LookupError(f"no version {name!r} in {registry.root} (published: {known})")


def describe(root: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Per kind, every published version, oldest first: its name, whether it is current, when it was created
    and the headline of its metadata (an unreadable ``meta.json`` is reported, not raised)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        registry = Registry(Path(root) / kind)
        current = registry.current_or_none()  # a pointer naming no version: none (`models list` says why)
        rows = []
        for version in registry.versions():
            row: dict[str, Any] = {"version": version, "current": version == current}
            try:
                meta = registry.meta(version)
            except (OSError, ValueError) as exc:
                row["error"] = f"meta.json unreadable: {exc}"
            else:
                row["created_unix"] = meta.get("created_unix")
                row.update({k: meta[k] for k in HEADLINE if k in meta})
            rows.append(row)
        out[kind] = rows
    return out
