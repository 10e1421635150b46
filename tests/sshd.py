"""Real sshd on loopback addresses, the hosts stock Ansible reaches in parity tests and benchmarks.

One sshd process listens on up to 16 addresses (sshd's own limit per process is 16
ListenAddress lines), 127.0.0.2 upwards, on one port.  Logins use a dedicated user whose shell is
/bin/sh with no start-up files, so a remote command costs what it costs on a plain host (root's
shell on these machines runs `pyenv init`, which once inflated a stock figure by half).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOGIN_USER = "dacc"
MAX_ADDRESSES_PER_SSHD = 16
START_TIMEOUT = 15.0


def ensure_login_user(name: str = LOGIN_USER) -> pwd.struct_passwd:
    """Create the dedicated login user (key logins only, /bin/sh, empty home) if it is missing.

    The password field is '*' (no password can match) rather than useradd's '!' (locked): sshd
    without PAM refuses even key logins to a locked account.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name], check=True)
        return pwd.getpwnam(name)


def loopback_addresses(count: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{first + index}" for index in range(count)]


@dataclass
class SshHosts:
    """An sshd serving some loopback addresses, and the client key that logs in to them."""

    root: Path
    addresses: list[str]
    port: int
    user: str = LOGIN_USER
    process: subprocess.Popen[bytes] | None = None
    client_key: Path = field(init=False)
    _public_dir: Path | None = None

    def __post_init__(self) -> None:
        if len(self.addresses) > MAX_ADDRESSES_PER_SSHD:
            raise ValueError(f"one sshd listens on at most {MAX_ADDRESSES_PER_SSHD} addresses")
        self.client_key = self.root / "client_key"

    def start(self) -> SshHosts:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise RuntimeError("sshd is not installed (Debian package openssh-server; scripts/setup-env installs it)")
        ensure_login_user(self.user)
        self.root.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        host_key = self.root / "host_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        # sshd reads the key file as the login user, who cannot enter pytest's 0700 directories.
        self._public_dir = Path(tempfile.mkdtemp(prefix="directord-sshd-"))
        self._public_dir.chmod(0o755)
        authorized = self._public_dir / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o644)
        config = self.root / "sshd_config"
        config.write_text(self._config(host_key, authorized))
        log = (self.root / "sshd.log").open("ab")
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        self._wait_listening()
        return self

    def _config(self, host_key: Path, authorized: Path) -> str:
        listen = "\n".join(f"ListenAddress {address}" for address in self.addresses)
        return f"""Port {self.port}
{listen}
HostKey {host_key}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {authorized}
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {self.user}
MaxStartups 200:30:400
MaxSessions 200
PrintMotd no
Subsystem sftp internal-sftp
"""

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for address in self.addresses:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
                try:
                    with socket.create_connection((address, self.port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sshd is not listening on {address}:{self.port}") from None
                    time.sleep(0.05)

    def ssh_args(self) -> str:
        """Options for ansible_ssh_common_args: no host key prompts for throw-away hosts."""
        return "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"

    def inventory(self, names: list[str] | None = None) -> str:
        """An INI inventory: one host per address, reached over this sshd as the login user."""
        names = names or [f"host{index + 1}" for index in range(len(self.addresses))]
        lines = ["[targets]"]
        for name, address in zip(names, self.addresses):
            lines.append(
                f"{name} ansible_host={address} ansible_port={self.port} ansible_user={self.user} "
                f"ansible_ssh_private_key_file={self.client_key} "
                f"ansible_ssh_common_args='{self.ssh_args()}' ansible_python_interpreter=/usr/bin/python3"
            )
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        if self._public_dir is not None:
            shutil.rmtree(self._public_dir, ignore_errors=True)
