"""``izreg fsck`` (izreg.storage.fsck) over a real index (LMDB and PostgreSQL) and blob files in tmp_path."""

from __future__ import annotations

from izreg.core.digest import Digest
from izreg.storage.blobs import BlobStore
from izreg.storage.fsck import Checker
from tests.helpers.indexes import backdoor, index, index_backend  # noqa: F401  (fixtures: both backends)

A = "0123456789abcdef0123456789abcdef"
REPO = f"{A}/app"


def stored(index, blobs, data: bytes, size: int | None = None) -> Digest:
    digest = Digest.of(data)
    index.commit_blob(REPO, digest, len(data) if size is None else size, 1.0, None,
                      place=lambda: blobs.put_bytes(digest, data))
    return digest


def test_a_clean_store_is_clean(index, tmp_path):
    blobs = BlobStore(str(tmp_path))
    layer = stored(index, blobs, b"layer")
    index.put_manifest(REPO, Digest.of(b"m"), {"mediaType": "x", "subject": None}, b"m", [(str(layer), 5)], [],
                       "v1", None, 1.0)
    report = Checker(index, blobs).check()
    assert report.clean and (report.blobs, report.manifests) == (1, 1)


def test_problems_found_and_repaired(index, backdoor, tmp_path):
    blobs = BlobStore(str(tmp_path))
    lost = stored(index, blobs, b"lost layer")
    corrupt = stored(index, blobs, b"corrupt layer")
    wrong = stored(index, blobs, b"wrong size", size=3)
    orphan = Digest.of(b"orphan")
    blobs.put_bytes(orphan, b"orphan")
    index.put_manifest(REPO, Digest.of(b"m"), {"mediaType": "x", "subject": None}, b"m", [(str(lost), 10)], [],
                       "v1", None, 1.0)
    blobs.delete(lost)
    with open(blobs.path(corrupt), "r+b") as f:
        f.write(b"X")
    report = Checker(index, blobs).check()
    text = "\n".join(report.problems)
    for expected in (f"missing blob {lost}", f"corrupt blob {corrupt}", f"blob {wrong}: recorded size 3, stored 10",
                     f"references blob {lost}, which is lost"):
        assert expected in text
    assert report.orphans == [f"orphan blob {orphan}: stored, but no index entry names it"]  # not a problem
    assert index.blob_record(lost) is not None  # no repair: nothing changed
    report = Checker(index, blobs).check(repair=True, now=5.0)
    assert index.blob_record(lost) is None and index.blob_size(REPO, lost) is None
    assert index.blob_record(corrupt) is None and blobs.stat(corrupt) is None
    assert index.blob_record(wrong)["size"] == 10
    assert index.blob_record(orphan) == {"size": 6, "created": 5.0, "touched": 5.0}
    assert report.unrepaired == [f"manifest {REPO}@{Digest.of(b'm')} references blob {lost}, which is lost:"
                                 " push the image again"]
    again = Checker(index, blobs).check()
    assert again.problems == [f"manifest {REPO}@{Digest.of(b'm')} references blob {lost}, which is lost"]


def test_a_missing_child_manifest_is_reported(index, backdoor, tmp_path):
    blobs = BlobStore(str(tmp_path))
    child, parent = Digest.of(b"child"), Digest.of(b"parent")
    index.put_manifest(REPO, child, {"mediaType": "x", "subject": None}, b"child", [], [], None, None, 1.0)
    index.put_manifest(REPO, parent, {"mediaType": "x", "subject": None}, b"parent", [], [str(child)], "v1", None, 1.0)
    backdoor.drop_manifest_record(REPO, child)
    report = Checker(index, blobs).check()
    assert f"index {REPO}@{parent} references manifest {child}, which is not in the repository" in report.problems


def test_a_blob_collected_while_fsck_runs_is_no_problem(index, tmp_path):
    # izreg fsck runs beside the server: a sweep that removes a blob (its record, then its file) after fsck
    # read the records is not a "missing blob" (a kill -9 loop's fsck, the server's gc every second, said so)
    blobs = BlobStore(str(tmp_path))
    kept, collected = stored(index, blobs, b"kept"), stored(index, blobs, b"collected")

    class SweptMeanwhile(Checker):
        def records(self):
            found = super().records()
            self.index.forget_blob(collected)  # the server's sweep, between fsck's two looks
            self.blobs.delete(collected)
            return found

    report = SweptMeanwhile(index, blobs).check()
    assert report.clean, report.problems
    assert report.blobs == 2 and index.blob_record(kept) is not None


def test_a_blob_collected_between_its_stat_and_its_hash_is_no_problem(index, tmp_path):
    # the same sweep a moment later, after fsck found the file and before it read it: a FileNotFoundError
    # (a traceback, the check ended) instead of a clean report
    blobs = BlobStore(str(tmp_path))
    kept, collected = stored(index, blobs, b"kept"), stored(index, blobs, b"collected")
    orphan = Digest.of(b"orphan")
    blobs.put_bytes(orphan, b"orphan")

    class SweepingStore(BlobStore):
        def hash(self, digest, algorithm):
            if digest in (collected, orphan):  # the server's sweep, between fsck's stat and its hash
                index.forget_blob(collected)
                BlobStore.delete(self, digest)
            return super().hash(digest, algorithm)

    report = Checker(index, SweepingStore(str(tmp_path))).check(repair=True)
    assert report.clean and not report.repaired, (report.problems, report.repaired)
    assert index.blob_record(kept) is not None and index.blob_record(orphan) is None
