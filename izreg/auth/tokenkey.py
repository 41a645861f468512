# -*- test-case-name: tests.auth.test_store -*-
"""
The token signing key, kept in the data directory so that issued tokens stay
valid across a restart or an upgrade.

``DATA_DIR/token.key`` holds 32 random bytes (hex), mode 0600 in the 0700
data directory, like ``bootstrap.txt``; it is never logged or printed. It is
made on first use. ``izreg token rotate-key`` replaces it atomically; the
server notices the new file (a stat per use) and every token signed with
the old key fails from then on (clients fetch a new one on the 401).
"""

from __future__ import annotations

import os
import secrets

KEY_FILE = "token.key"


class TokenKey:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, KEY_FILE)
        self._seen = None
        self._secret: bytes | None = None

    def __repr__(self) -> str:
        return f"TokenKey({self.path!r})"

    def secret(self) -> bytes:
        """The current key (read again when the file changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.rotate(replace=False)
            st = os.stat(self.path)
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen or self._secret is None:
            with open(self.path, encoding="ascii") as f:
                self._secret = bytes.fromhex(f.read().strip())
            if len(self._secret) < 32:
                raise ValueError(f"{self.path} does not hold a 32-byte key")
            self._seen = seen
        return self._secret

    def rotate(self, replace: bool = True) -> None:
        """Write a new key (temp file 0600, fsync, rename); with C{replace=False} keep an existing one."""
        temp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_bytes(32).hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if replace:
                os.replace(temp, self.path)
            else:
                try:
                    os.link(temp, self.path)  # never overwrite a key another process just made
                except FileExistsError:
                    pass
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
