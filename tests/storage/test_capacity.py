"""The disk floor (pure parsing, a fake statvfs) and the write probe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from izreg.storage.capacity import DiskFloor, Floor, parse_floor, probe_writable
from tests.helpers.server import REPO_ROOT


@pytest.mark.parametrize("text, floor", [
    ("0", Floor(0)), ("1024", Floor(1024)), ("2GB", Floor(2 * 10**9)), ("2 GiB", Floor(2 * 1024**3)),
    ("512MiB", Floor(512 * 1024**2)), ("1.5gb", Floor(1_500_000_000)), ("5%", Floor(percent=5.0)),
])
def test_parse_floor(text, floor):
    assert parse_floor(text) == floor


@pytest.mark.parametrize("text", ["", "-1GB", "2XB", "101%", "GB", "5 %%"])
def test_bad_floors_are_refused(text):
    with pytest.raises(ValueError):
        parse_floor(text)


def statvfs(free_blocks: int, blocks: int = 1000, size: int = 4096):
    return lambda path: SimpleNamespace(f_bavail=free_blocks, f_blocks=blocks, f_frsize=size)


def test_the_floor_in_bytes_and_percent():
    disk = DiskFloor("/x", parse_floor("400KB"), statvfs(free_blocks=100))  # 409600 bytes free
    assert disk.refusal() is None
    disk.floor = parse_floor("500KB")
    assert "low on disk space (409.6 KB free, the floor is 500.0 KB)" in disk.refusal()
    disk.floor = parse_floor("10%")
    assert disk.refusal() is None and disk.space().minimum == 409600
    disk.floor = parse_floor("11%")
    assert disk.refusal() is not None


def test_the_write_probe(tmp_path):
    (tmp_path / "uploads").mkdir()
    assert probe_writable(str(tmp_path), ("uploads", "blobs")) is None  # blobs/ is not there: not probed
    assert os.listdir(tmp_path) == ["uploads"] and os.listdir(tmp_path / "uploads") == []
    (tmp_path / "blobs").write_text("")  # not a directory: not probed
    assert probe_writable(str(tmp_path), ("blobs",)) is None
    # a directory by its place in the data directory, not its path (/readyz answers anyone)
    assert probe_writable(str(tmp_path / "gone")) == "the data directory is not writable: No such file or directory"
    os.chmod(tmp_path / "uploads", 0o500)
    try:
        said = probe_writable(str(tmp_path), ("uploads",))
    finally:
        os.chmod(tmp_path / "uploads", 0o700)
    if os.geteuid() != 0:  # root writes anyway
        assert said == "the data directory (its uploads/) is not writable: Permission denied"


def test_write_probes_at_once_do_not_remove_each_others_file(tmp_path):
    # /readyz in a storm runs probes in several I/O threads: one fixed name per process let one
    # probe unlink the file of another, whose own unlink then failed (ENOENT: "not writable")
    failures: list[str] = []

    def probes() -> None:
        failures.extend(e for e in (probe_writable(str(tmp_path)) for _ in range(300)) if e)

    threads = [threading.Thread(target=probes) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert os.listdir(tmp_path) == []


def test_a_write_probe_that_cannot_write_leaves_no_file(tmp_path):
    # a full disk: mkstemp makes the file, the write fails (ENOSPC) and the file stayed, one more on
    # every /readyz (anyone's: 300 requests, 300 files). Here the write fails for a file size limit of 0
    # (EFBIG), in a process of its own.
    code = ("import resource, signal, sys\n"
            "from izreg.storage.capacity import probe_writable\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
            "print(probe_writable(sys.argv[1]))\n")
    probe = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                           cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert probe.returncode == 0, probe.stderr
    assert "is not writable: File too large" in probe.stdout
    assert os.listdir(tmp_path) == []
