"""
The docker CLI's client-side registry code (no daemon needed):
``docker manifest inspect --insecure`` on an image and on a multi-platform index.
Credentials go in a private DOCKER_CONFIG (``auths`` as ``docker login`` writes it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from tests.helpers.ocilayout import build_index_layout, build_layout
from tests.helpers.skopeo import SKOPEO, Skopeo

DOCKER = shutil.which("docker")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(DOCKER is None, reason="no docker CLI"),
    pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed (used to push)"),
]


def docker(registry, tmp_path, *args):
    config = tmp_path / "docker-config"
    if not config.exists():
        config.mkdir()
        auths = {}
        if registry.creds:
            auths[registry.host] = {"auth": base64.b64encode(registry.creds.encode()).decode()}
        (config / "config.json").write_text(json.dumps({"auths": auths}))
    env = dict(os.environ, DOCKER_CONFIG=str(config))
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_docker_manifest_inspect(registry, new_repo, tmp_path):
    sk = Skopeo(registry, tmp_path)
    repo = new_repo("docker")
    image = build_layout(tmp_path / "img", tag="v1", layers=[1000, 3000], seed=70)
    multi = build_index_layout(tmp_path / "multi", tag="multi", seed=71)
    sk.copy(f"oci:{image['path']}:v1", sk.ref(repo, "v1"))
    sk.copy(f"oci:{multi['path']}:multi", sk.ref(repo, "multi"), "--all")

    got = docker(registry, tmp_path, "manifest", "inspect", "--insecure", f"{registry.host}/{repo}:v1")
    assert got == image["manifest"]
    verbose = docker(registry, tmp_path, "manifest", "inspect", "-v", "--insecure", f"{registry.host}/{repo}:v1")
    assert verbose["Descriptor"]["digest"] == image["manifest_digest"]
    assert verbose["Descriptor"]["size"] == len(image["manifest_bytes"])

    got = docker(registry, tmp_path, "manifest", "inspect", "--insecure", f"{registry.host}/{repo}:multi")
    assert got == multi["index"]
    verbose = docker(registry, tmp_path, "manifest", "inspect", "-v", "--insecure", f"{registry.host}/{repo}:multi")
    assert sorted(v["Descriptor"]["digest"] for v in verbose) == sorted(im["manifest_digest"] for im in multi["images"])
    assert sorted(v["Descriptor"]["platform"]["architecture"] for v in verbose) == ["amd64", "arm64"]
