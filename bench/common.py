"""Shared pieces of the benchmark: constants, generated blobs, free ports, server CPU and memory."""


import contextlib
import hashlib
import os
import socket
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
MB = 1e6
PATCH_CHUNK = 32 * 1024  # docker's io.Copy buffer: one chunked-encoding chunk each
SEND_BLOCK = 1 * MiB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 120.0


# --------------------------------------------------------------------------------------
# Blobs: a unique header and a shared random block, generated on the fly (no client disk)
# --------------------------------------------------------------------------------------

_BLOCK = os.urandom(SEND_BLOCK)


class Blob:
    """C{size} bytes: 64 bytes unique to C{label}, then a repeated random MiB."""

    def __init__(self, label: str, size: int) -> None:
        self.label, self.size = label, size
        self.head = hashlib.sha256(f"{label}/{time.time_ns()}/{os.getpid()}".encode()).digest() * 2
        h = hashlib.sha256()
        for block in self.blocks():
            h.update(block)
        self.digest = "sha256:" + h.hexdigest()

    def blocks(self, size: int = SEND_BLOCK):
        """The content as memoryviews of at most C{size} bytes."""
        block = memoryview(self.head + _BLOCK)
        sent, first = 0, True
        while sent < self.size:
            if first:
                src, first = block, False
            else:
                src = memoryview(_BLOCK)
            src = src[: self.size - sent]
            for i in range(0, len(src), size):
                piece = src[i : i + size]
                yield piece
                sent += len(piece)

    def bytes(self) -> bytes:
        return b"".join(bytes(b) for b in self.blocks())



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def closing_all(sockets: list):
    """Yield C{sockets} (a list the caller fills); close those still in it at the end, however it ends."""
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
        sockets.clear()


def _status(pid: int, field: str, name: str = "status") -> int:
    """A C{kB} C{field} of /proc/PID/C{name} (status; smaps_rollup for Pss), in bytes (0: not there)."""
    with open(f"/proc/{pid}/{name}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of C{pid}, all threads: its process CPU clock (nanoseconds; a
    measurement of a quarter second of CPU is not rounded to 10 ms clock ticks), else
    C{/proc/<pid>/stat}'s ticks.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except (OSError, OverflowError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRSS:
    """
    Peak resident memory of C{pid} over a ``with`` block (VmHWM after a reset,
    and sampled VmRSS), and the CPU time it used (C{cpu}, seconds).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.reset_ok = False

    def __enter__(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.sampled = _status(self.pid, "VmRSS")
        self._cpu0 = cpu_seconds(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled = max(self.sampled, _status(self.pid, "VmRSS"))
            except OSError:
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        hwm = _status(self.pid, "VmHWM") if self.reset_ok else 0
        self.peak = max(hwm, self.sampled)
        return False



def evict(directory: str, blob: "Blob") -> int:
    """
    Drop C{blob}'s file(s) under a server's data C{directory} from the page
    cache (fsync, then C{POSIX_FADV_DONTNEED}), so that its next GET reads the
    disk. Both servers keep a blob in a file whose path holds its hex digest;
    returns how many files were evicted.
    """
    hexpart = blob.digest.split(":", 1)[1]
    n = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if hexpart in path and os.path.getsize(path) == blob.size:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)  # dirty pages are not dropped; write them first
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                n += 1
    return n


def size_label(size: int) -> str:
    return f"{size // MiB} MiB"


def mib(value: float | None) -> str:
    """C{value} bytes in MiB, one decimal; "–" for none (a window the samples did not reach)."""
    return "–" if value is None else f"{value / MiB:.1f}"


# --------------------------------------------------------------------------------------
# CPU placement
# --------------------------------------------------------------------------------------


def placement() -> tuple[set[int], set[int]] | None:
    """
    (the server's CPUs, the client's CPUs) for the one-client blob pulls: the
    first CPU this process may run on for the server, the others for the
    client; C{None} on a single CPU. On two CPUs, an unpinned server and
    client land on one CPU or on two at the scheduler's whim, a whole round
    at a time, and a one-client pull runs at twice the speed in one case as
    in the other (docs/benchmark.md); pinned, both servers meet the same
    placement, which is the one of a client on another machine.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def _set_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of C{pid} to C{cpus} (threads started later inherit it from their creator)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


@contextlib.contextmanager
def pinned(pid: int, cpus: set[int] | None):
    """Run the server C{pid} (all its threads) on C{cpus} during the block (nothing if C{None}); then on every CPU again."""
    if cpus is None:
        yield
        return
    everywhere = os.sched_getaffinity(0)
    _set_threads(pid, cpus)
    try:
        yield
    finally:
        try:
            _set_threads(pid, everywhere)
        except FileNotFoundError:  # the server is gone
            pass
