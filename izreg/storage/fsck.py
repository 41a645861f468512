# -*- test-case-name: tests.storage.test_fsck -*-
"""
``izreg fsck``: is what the index says stored really there and whole?

- every blob record: the blob exists (``IBlobStore.stat``) with the recorded
  size and hashes to its digest (``IBlobStore.hash``);
- every manifest: each blob it names has a record and a link in its
  repository, each child manifest of an index is in the repository;
- orphans: stored blobs no record names;
- the derived reference data (``refs``) matches a recount.

Orphans are not problems (L{Report.orphans}, not L{Report.problems}): a
blob's bytes are stored before its record is committed, so a crash or a
killed upload between the two leaves one by design; nothing names it, no
client is served it, and garbage collection deletes stored blobs no record
names once they are older than its grace period. C{izreg fsck} says so and
still exits 0 when they are all it found: exit status 1 is for what needs
the operator (a missing or corrupt blob, a manifest that lost one), so that
C{izreg fsck || alert} after a crash pages only on damage.

With C{repair}: a missing or corrupt blob loses its record and links (so a
client pushes it again rather than being served bad bytes), an orphan whose
bytes match its name is indexed again (garbage collection then takes it if
nothing references it), a wrong recorded size is corrected, and the
reference data is rebuilt. What cannot be repaired (a manifest whose blob
is lost) is said so.

Blocking throughout (hashing reads every blob): run it from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from izreg.core.digest import Digest
from izreg.storage.interfaces import StorageError


#: what C{izreg fsck} says of orphans (L{Report.orphans}), once
ORPHANS_EXPECTED = ("expected after a crash or a killed upload; gc reclaims them after the grace period,"
                    " or fsck --repair re-indexes them")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    #: stored blobs no record names: no damage (see the module's docstring), not in C{problems}
    orphans: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    blobs: int = 0
    manifests: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


class Checker:
    def __init__(self, index, blobs) -> None:
        self.index = index
        self.blobs = blobs

    def records(self) -> list[tuple[str, dict]]:
        return self.index.blob_records()

    def check(self, repair: bool = False, progress=None, now: float = 0.0) -> Report:
        report = Report()
        records = self.records()
        named = {digest for digest, _ in records}
        orphans = [d for d in self.blobs.digests() if str(d) not in named]
        step = progress(len(records) + len(orphans)) if progress else (lambda: None)
        lost: set[str] = set()
        for digest_text, record in records:
            report.blobs += 1
            self._check_blob(Digest.parse(digest_text), record, report, repair, lost)
            step()
        for digest in orphans:
            self._check_orphan(digest, report, repair, now)
            step()
        self._check_manifests(report, lost)
        self._check_derived(report, repair)
        return report

    def _check_blob(self, digest: Digest, record: dict, report: Report, repair: bool, lost: set[str]) -> None:
        found = self.blobs.stat(digest)
        if found is None and self.index.blob_record(digest) is None:
            return  # collected meanwhile (a sweep of the running server: its record goes first, then its file)
        if found is None:
            report.problems.append(f"missing blob {digest}: indexed, but not stored")
            self._forget(digest, report, repair, lost, "missing")
            return
        actual = self._hash(digest)
        if actual is None and self.index.blob_record(digest) is None:
            return  # collected between the stat and the hash
        if actual is None:
            report.problems.append(f"missing blob {digest}: indexed, but not stored")
            self._forget(digest, report, repair, lost, "missing")
            return
        if actual != digest.hex:
            report.problems.append(f"corrupt blob {digest}: its bytes do not hash to its digest")
            if repair:
                self.blobs.delete(digest)
            self._forget(digest, report, repair, lost, "corrupt")
            return
        if record.get("size") != found[0]:
            report.problems.append(f"blob {digest}: recorded size {record.get('size')}, stored {found[0]}")
            if repair:
                self.index.set_blob_size(digest, found[0])
                report.repaired.append(f"blob {digest}: size corrected to {found[0]}")

    def _hash(self, digest: Digest) -> str | None:
        """The stored bytes' hash, or C{None} if the blob is gone meanwhile (a sweep of the running server)."""
        try:
            return self.blobs.hash(digest, digest.algorithm)
        except FileNotFoundError:
            return None
        except StorageError:
            if self.blobs.stat(digest) is None:
                return None
            raise

    def _forget(self, digest: Digest, report: Report, repair: bool, lost: set[str], why: str) -> None:
        lost.add(str(digest))
        if not repair:
            return
        self.index.forget_blob(digest)
        report.repaired.append(f"{why} blob {digest}: record and links removed (push it again)")

    def _check_orphan(self, digest: Digest, report: Report, repair: bool, now: float) -> None:
        found = self.blobs.stat(digest)
        if found is None:
            return  # gone meanwhile (garbage collection)
        report.orphans.append(f"orphan blob {digest}: stored, but no index entry names it")
        if not repair:
            return
        actual = self._hash(digest)
        if actual is None:
            return  # gone meanwhile (garbage collection)
        if actual == digest.hex:
            self.index.index_blob(digest, found[0], now)
            report.repaired.append(f"orphan blob {digest}: indexed again (garbage collection takes it if unused)")
        else:
            self.blobs.delete(digest)
            report.repaired.append(f"orphan blob {digest}: corrupt, deleted")

    def _check_manifests(self, report: Report, lost: set[str]) -> None:
        for name, digest, blobs, missing in self.index.manifest_references():
            report.manifests += 1
            for blob, linked, recorded in blobs:
                if blob in lost or not linked or not recorded:
                    message = f"manifest {name}@{digest} references blob {blob}, which is " + (
                        "lost" if blob in lost or not recorded else "not linked to the repository")
                    report.problems.append(message)
                    report.unrepaired.append(message + ": push the image again")
            for child in missing:
                message = f"index {name}@{digest} references manifest {child}, which is not in the repository"
                report.problems.append(message)
                report.unrepaired.append(message + ": push it again")

    def _check_derived(self, report: Report, repair: bool) -> None:
        """Recount the reference data; keep the recount only with C{repair}."""
        wrong = self.index.recount(repair)
        if wrong:
            report.problems.append(f"reference counts out of step with the manifests ({', '.join(wrong)})")
            if repair:
                report.repaired.append("reference counts rebuilt from the manifests")
