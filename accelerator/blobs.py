"""Content-addressed file storage: the server keeps uploaded files here, agents cache them here.

Files are named by their sha256, written through a temporary file and renamed only after the
digest matches, so a reader never sees a partial or corrupt blob.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class BlobError(ValueError):
    pass


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not SHA256_PATTERN.match(sha):
        raise BlobError(f"not a sha256 hex digest: {sha!r}")
    return sha


class BlobDir:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sha: str) -> Path:
        return self.directory / check_sha(sha)

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def size(self, sha: str) -> int:
        return self.path(sha).stat().st_size

    def read(self, sha: str, offset: int, size: int) -> bytes:
        with self.path(sha).open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def partial(self, sha: str) -> Path:
        return self.directory / f".{check_sha(sha)}.part"

    def write_chunk(self, sha: str, offset: int, data: bytes) -> None:
        """Write part of a blob being received; chunks may arrive in any order."""
        part = self.partial(sha)
        mode = "r+b" if part.exists() else "wb"
        with part.open(mode) as handle:
            handle.seek(offset)
            handle.write(data)

    def commit(self, sha: str) -> Path:
        """Verify a fully received blob and make it visible; a mismatch discards it."""
        part = self.partial(sha)
        if sha256_of(part) != sha:
            part.unlink(missing_ok=True)
            raise BlobError(f"blob {sha[:12]}: content does not match its sha256; discarded")
        final = self.path(sha)
        os.replace(part, final)
        return final

    def put_bytes(self, data: bytes) -> str:
        import hashlib
        import tempfile

        sha = hashlib.sha256(data).hexdigest()
        if not self.has(sha):
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".put-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path(sha))
        return sha


def sha256_of(path: Path) -> str:
    # hashlib loads libcrypto (4 MB); agents that never receive files never import it.
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
