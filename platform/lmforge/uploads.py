"""Writing to where stage outputs live, local or ``s3://``: files and whole dirs put in place, uploaded,
published with their ``.done`` marker last, emptied and deleted. Reading and mirroring are
:mod:`lmforge.storage`'s; this module adds the writes a stage's lifecycle and training need."""

from __future__ import annotations

from pathlib import Path

from lmforge.aws import s3_filesystem
from lmforge.storage import filesystem, is_remote, remote_files


def write_remote_text(uri: str, text: str) -> None:
    with s3_filesystem().open_output_stream(uri[len("s3://"):]) as f:
        f.write(text.encode("utf-8"))


def mirror_back(local: Path, uri: str) -> None:
    """A file written in an output's staging dir, copied to the output itself when that is remote (a local
    output is its own staging dir: nothing to do)."""
    if is_remote(uri):
        write_remote_text(uri, local.read_text(encoding="utf-8"))


def empty_remote(uri: str, marker: str = ".done", subdirs: tuple[str, ...] | None = None) -> None:
    """Delete everything under a remote dir (or under its ``subdirs``), its ``marker`` first (it holds no
    finished run any more); a local dir is left as it is."""
    if not is_remote(uri):
        return
    uri = uri.rstrip("/")
    delete_remote(f"{uri}/{marker}")
    if subdirs is None:
        for rel in remote_files(uri):
            delete_remote(f"{uri}/{rel}")
        return
    fs, path = filesystem(uri)
    for sub in subdirs:
        fs.delete_dir_contents(f"{path}/{sub}", missing_dir_ok=True)


def publish_remote(local: Path, uri: str, keep: tuple[str, ...], marker: str) -> bool:
    """Upload a finished ``local`` dir to ``uri`` when that is remote (its old ``marker`` removed first, the
    new one uploaded last); False when ``uri`` is local (nothing to upload)."""
    if not is_remote(uri):
        return False
    uri = uri.rstrip("/")
    delete_remote(f"{uri}/{marker}")
    upload_dir(local, uri, keep=keep, last=marker)
    return True


def delete_remote(uri: str) -> None:
    """Delete one remote object if it is there."""
    from pyarrow import fs

    s3 = s3_filesystem()
    path = uri[len("s3://"):]
    if s3.get_file_info(path).type == fs.FileType.File:
        s3.delete_file(path)


def put_dir(src: Path, uri: str, last: str | None = None) -> None:
    """Put a finished local dir at ``uri`` (local or remote), replacing what is there: locally copied under
    a temporary name, then renamed into place (atomic on one filesystem); remotely uploaded, ``last`` (a
    file name in ``src``) after everything else, so a reader that waits for it sees a whole dir."""
    if is_remote(uri):
        upload_dir(src, uri, last=last)
        return
    import shutil

    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def delete_dir(uri: str) -> None:
    """Delete a dir and everything under it, local or remote."""
    fs, path = filesystem(uri)
    fs.delete_dir(path)


def upload_dir(src: Path, uri: str, keep: tuple[str, ...] = (), last: str | None = None) -> None:
    """Make the remote dir ``uri`` hold exactly ``src``'s files: remote files ``src`` lacks are deleted
    (except under the ``keep`` sub-dirs, such as checkpoints written there directly), and ``last`` (a
    file name in ``src``) is uploaded after everything else."""
    from pyarrow import fs

    s3 = s3_filesystem()
    base = uri[len("s3://"):].rstrip("/")
    local = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    for stale in set(remote_files(uri)) - set(local):
        if not any(stale.startswith(k.rstrip("/") + "/") for k in keep):
            s3.delete_file(f"{base}/{stale}")
    for rel in sorted(local, key=lambda r: r == last):
        fs.copy_files(str(src / rel), f"{base}/{rel}", source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=s3)


def ensure_dir(uri: str) -> None:
    """Make a local dir (with parents); object stores have no dirs to make."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
