"""The disk floor (pure parsing, a fake statvfs) and the write probe."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest

from izreg.storage.capacity import DiskFloor, Floor, parse_floor, probe_writable


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
    assert probe_writable([str(tmp_path)]) is None
    assert os.listdir(tmp_path) == []
    missing = str(tmp_path / "gone")
    assert probe_writable([str(tmp_path), missing]).startswith(f"{missing} is not writable")


def test_write_probes_at_once_do_not_remove_each_others_file(tmp_path):
    # /readyz in a storm runs probes in several I/O threads: one fixed name per process let one
    # probe unlink the file of another, whose own unlink then failed (ENOENT: "not writable")
    failures: list[str] = []

    def probes() -> None:
        failures.extend(e for e in (probe_writable([str(tmp_path)]) for _ in range(300)) if e)

    threads = [threading.Thread(target=probes) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert os.listdir(tmp_path) == []
