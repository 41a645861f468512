"""Run skopeo against a test registry (plain HTTP, flags from /work/shared/CLIENTS.md)."""

from __future__ import annotations

import json
import shutil
import subprocess

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
TIMEOUT = 120


class SkopeoError(AssertionError):
    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        super().__init__(
            f"skopeo failed (exit {proc.returncode}): {' '.join(proc.args)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


class Skopeo:
    """
    C{registry} is a L{tests.helpers.server.RegistryProcess}: its C{creds}
    (None until izreg has access keys) becomes ``--creds``/``--src-creds``/``--dest-creds``.
    """

    def __init__(self, registry, tmpdir):
        self.registry = registry
        self.tmpdir = str(tmpdir)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # --insecure-policy: no signature policy; --tmpdir keeps big blobs out of /var/tmp
        cmd = [SKOPEO, "--insecure-policy", "--tmpdir", self.tmpdir, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise SkopeoError(proc)
        return proc

    def _creds(self, flag: str) -> list[str]:
        return [flag, self.registry.creds] if self.registry.creds else []

    def ref(self, repo: str, tag_or_digest: str) -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"docker://{self.registry.host}/{repo}{sep}{tag_or_digest}"

    def copy(self, src: str, dest: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        flags = ["copy"]
        if src.startswith("docker://"):
            flags += ["--src-tls-verify=false", *self._creds("--src-creds")]
        if dest.startswith("docker://"):
            flags += ["--dest-tls-verify=false", *self._creds("--dest-creds")]
        return self.run(*flags, *extra, src, dest, check=check)

    def inspect(self, ref: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("inspect", "--tls-verify=false", *self._creds("--creds"), *extra, ref, check=check)

    def inspect_json(self, ref: str) -> dict:
        return json.loads(self.inspect(ref).stdout)

    def inspect_raw(self, ref: str, config: bool = False) -> bytes:
        args = ["--raw"] + (["--config"] if config else [])
        cmd = [SKOPEO, "--insecure-policy", "--tmpdir", self.tmpdir, "inspect", "--tls-verify=false",
               *self._creds("--creds"), *args, ref]
        proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SkopeoError(subprocess.CompletedProcess(
                cmd, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")))
        return proc.stdout

    def list_tags(self, repo: str, check: bool = True):
        proc = self.run("list-tags", "--tls-verify=false", *self._creds("--creds"),
                        f"docker://{self.registry.host}/{repo}", check=check)
        return json.loads(proc.stdout)["Tags"] if proc.returncode == 0 else proc

    def delete(self, ref: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("delete", "--tls-verify=false", *self._creds("--creds"), ref, check=check)
