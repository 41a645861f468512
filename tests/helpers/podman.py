"""
Run podman against a test registry, the way /work/shared/CLIENTS.md found it
works here: ``podman --storage-driver vfs --root R --runroot RR
--events-backend file ...`` (no daemon; ``podman run`` fails in a sandbox, push
and pull need no runtime).

Each L{Podman} has its own image store, its own login file
(``REGISTRY_AUTH_FILE``, what ``podman login`` writes) and its own temp dir,
so tests never see each other's images or credentials, nor the machine's.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile

PODMAN = shutil.which("podman")
TIMEOUT = 120


def podman_available() -> bool:
    return PODMAN is not None


class Podman:
    def __init__(self, tmpdir):
        self.tmpdir = os.fspath(tmpdir)
        os.makedirs(os.path.join(self.tmpdir, "tmp"), exist_ok=True)
        # podman refuses a runroot of more than 50 characters: pytest's tmp_path is longer (it holds only locks)
        self.runroot = tempfile.mkdtemp(prefix="izreg-podman-", dir="/tmp")
        self.authfile = os.path.join(self.tmpdir, "auth.json")
        with open(self.authfile, "w") as f:  # podman refuses a REGISTRY_AUTH_FILE that does not exist
            f.write('{"auths": {}}')
        self.env = dict(os.environ, REGISTRY_AUTH_FILE=self.authfile, TMPDIR=os.path.join(self.tmpdir, "tmp"))

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """``podman ARGS`` on this store; the caller checks the exit code (L{ok}, L{refused})."""
        cmd = [PODMAN, "--storage-driver", "vfs", "--root", os.path.join(self.tmpdir, "root"),
               "--runroot", self.runroot, "--events-backend", "file", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=self.env,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def import_image(self, ref: str, files: dict[str, bytes]) -> str:
        """``podman import`` of a tar holding C{files} (one layer, no runtime needed) as C{ref}: its image id."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
        path = os.path.join(self.tmpdir, f"rootfs-{secrets.token_hex(4)}.tar")
        with open(path, "wb") as f:
            f.write(data.getvalue())
        ok(self.run("import", path, ref))
        return self.image_id(ref)

    def image_id(self, ref: str) -> str:
        """The image id: the digest of its config (``sha256:...``), what a manifest's C{config.digest} says."""
        return "sha256:" + ok(self.run("image", "inspect", "--format", "{{.Id}}", ref)).stdout.strip()

    def exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref).returncode == 0

    def saved_files(self, ref: str, out) -> dict[str, bytes]:
        """``podman save --format oci-dir`` of C{ref}: the files of its layers, as podman holds them."""
        out = os.fspath(out)
        ok(self.run("save", "--format", "oci-dir", "-o", out, ref))

        def blob(digest: str) -> bytes:
            with open(os.path.join(out, "blobs", *digest.split(":", 1)), "rb") as f:
                return f.read()

        with open(os.path.join(out, "index.json")) as f:
            manifest = json.loads(blob(json.load(f)["manifests"][0]["digest"]))
        files = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"])), mode="r:*") as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        files[member.name.removeprefix("./")] = tar.extractfile(member).read()
        return files


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def refused(proc: subprocess.CompletedProcess, *messages: str) -> subprocess.CompletedProcess:
    assert proc.returncode != 0, f"{' '.join(proc.args)} should have failed:\n{proc.stdout}\n{proc.stderr}"
    for message in messages:
        assert message in proc.stderr, f"{message!r} not in:\n{proc.stderr}"
    return proc
