# -*- test-case-name: tests.service.test_tls -*-
"""L{CRLFile}: the device CRL file, re-read off the reactor when it changes."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cryptography import x509
from twisted.logger import Logger

from izreg.core.text import plural

log = Logger()


@dataclass
class CRLFile:
    """
    An optional CRL file (C{--device-crl}): one or more PEM CRLs, each signed
    by a device CA. C{current()} (per request, on the reactor) returns the
    CRLs last read, with no I/O; C{refresh()} (blocking: the service calls it
    in the I/O pool every C{tls.device_crl_interval} seconds) stats the file
    and re-reads it when its mtime, size or inode changed. A file that fails
    to parse or verify is logged and the previous CRLs stay in force.
    """

    path: str
    cas: Callable[[], Sequence[x509.Certificate]]
    stat: Callable[[str], os.stat_result] = os.stat
    _seen: tuple | None = field(default=None, init=False)
    _crls: tuple[x509.CertificateRevocationList, ...] = field(default=(), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def current(self) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls

    def refresh(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Stat the file and re-read it if it changed (blocking)."""
        with self._lock:
            try:
                st = self.stat(self.path)
            except OSError as e:
                if self._seen != ("missing",):
                    log.error("cannot stat the device CRL {path}: {error}; keeping {crls}",
                              path=self.path, error=e.strerror, n=len(self._crls), crls=plural(len(self._crls), "CRL"))
                    self._seen = ("missing",)
                return self._crls
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            if seen != self._seen:
                self._seen = seen
                try:
                    self._crls = self.load()
                    log.info("loaded {crls} from {path}", crls=plural(len(self._crls), "device CRL"), n=len(self._crls),
                             path=self.path)
                except (OSError, ValueError) as e:
                    log.error("ignoring the device CRL {path}: {error}; keeping {crls}",
                              path=self.path, error=str(e), n=len(self._crls), crls=plural(len(self._crls), "CRL"))
            return self._crls

    def reload(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Re-read the file now, changed or not (SIGHUP; blocking)."""
        with self._lock:
            self._seen = None
        return self.refresh()

    def load(self) -> tuple[x509.CertificateRevocationList, ...]:
        with open(self.path, "rb") as f:
            data = f.read()
        marker = b"-----BEGIN X509 CRL-----"
        blocks = [marker + part for part in data.split(marker)[1:]]
        if not blocks:
            raise ValueError("no PEM CRL in the file")
        crls = tuple(x509.load_pem_x509_crl(block) for block in blocks)
        cas = self.cas()
        for crl in crls:
            if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()) for ca in cas):
                raise ValueError(f"the CRL from {crl.issuer.rfc4514_string()} is not signed by a device CA")
        return crls
