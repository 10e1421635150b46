"""Curve key pairs on disk, and the server's list of enrolled agent keys.

Like `salt-key`: every agent has its own key pair; the server accepts an agent only once its
public key is enrolled under a name, and that name *is* the agent's identity (a claimed
hostname counts for nothing).  The agent pins the server's public key, so a rogue server
cannot take its jobs.

Layout under a keys directory:
    server.pub / server.secret      the server pair (secret mode 0600)
    agent.pub  / agent.secret       an agent's own pair (agent side)
    enrolled/NAME.pub               agent keys the server accepts
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from accelerator import transport

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
Z85_KEY_PATTERN = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


class KeyFileError(ValueError):
    """A key file or name that cannot be used; the text names which and why."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise KeyFileError(f"agent name {name!r} is invalid: use letters, digits, '.', '_', ':' or '-' (max 128)")
    return name


def check_public_key(text: str, origin: str) -> str:
    key = text.strip()
    if not Z85_KEY_PATTERN.match(key):
        raise KeyFileError(f"{origin}: not a Curve public key (expected 40 Z85 characters)")
    return key


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: str
    secret: str


def write_keypair(directory: Path, stem: str, *, overwrite: bool = False) -> KeyPair:
    """Create STEM.pub and STEM.secret in `directory`; never clobbers an existing pair unless asked."""
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{stem}.pub", directory / f"{stem}.secret"
    if secret_path.exists() and not overwrite:
        return read_keypair(directory, stem)
    public, secret = transport.generate_keypair()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    public_path.write_text(public + "\n")
    return KeyPair(public, secret)


def read_keypair(directory: Path, stem: str) -> KeyPair:
    secret_path = directory / f"{stem}.secret"
    try:
        secret = secret_path.read_text().strip()
    except FileNotFoundError:
        raise KeyFileError(f"{secret_path}: no such key; create it with 'directord keys generate'") from None
    try:
        public = transport.public_from_secret(secret)
    except Exception:
        raise KeyFileError(f"{secret_path}: not a Curve secret key") from None
    return KeyPair(public, secret)


def read_public(path: Path) -> str:
    try:
        return check_public_key(path.read_text(), str(path))
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such public key file") from None


class Enrollment:
    """The server's allow-list: enrolled/NAME.pub files, mapped both ways."""

    def __init__(self, keys_dir: Path) -> None:
        self.directory = keys_dir / "enrolled"

    def enroll(self, name: str, public_key: str) -> Path:
        check_name(name)
        key = check_public_key(public_key, f"key for {name}")
        for other, other_key in self.load().items():
            if other_key == key and other != name:
                raise KeyFileError(f"this key is already enrolled as {other!r}; revoke it first")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.pub"
        path.write_text(key + "\n")
        return path

    def revoke(self, name: str) -> bool:
        path = self.directory / f"{check_name(name)}.pub"
        if not path.exists():
            return False
        path.unlink()
        return True

    def load(self) -> dict[str, str]:
        """name -> public key for every readable enrolled key (unreadable files are skipped)."""
        enrolled: dict[str, str] = {}
        if not self.directory.is_dir():
            return enrolled
        for path in sorted(self.directory.glob("*.pub")):
            try:
                enrolled[check_name(path.stem)] = read_public(path)
            except KeyFileError:
                continue
        return enrolled
