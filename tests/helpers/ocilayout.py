"""
Build an OCI image layout on disk with the standard library only.

The layout follows the image-spec ``image-layout.md``::

    DIR/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    DIR/index.json                 one manifest descriptor per tag
                                   (annotation org.opencontainers.image.ref.name)
    DIR/blobs/sha256/<hex>         config, layers and manifests

Layers are gzip-compressed tars, each holding one file of deterministic
pseudo-random (incompressible) bytes, so the same arguments always give the
same digests. skopeo reads the result as ``oci:DIR:TAG``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from typing import Iterable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    """Compact, key-sorted JSON (what most Go clients produce)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def random_bytes(size: int, seed) -> bytes:
    """C{size} deterministic pseudo-random bytes for C{seed}."""
    return random.Random(seed).randbytes(size)


def make_tar(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A reproducible (fixed mtime/owner/mode) uncompressed tar of C{files}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Reproducible gzip (mtime 0, no file name in the header)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def make_layer(size: int, seed) -> dict:
    """One gzip tar layer whose single file holds C{size} random bytes."""
    tar = make_tar([(f"data/layer-{seed}.bin", random_bytes(size, seed))])
    blob = gzip_bytes(tar)
    return {
        "mediaType": OCI_LAYER_GZIP,
        "digest": sha256_digest(blob),
        "size": len(blob),
        "diff_id": sha256_digest(tar),
        "bytes": blob,
    }


def _write_blob(path: str, data: bytes) -> str:
    digest = sha256_digest(data)
    blob_dir = os.path.join(path, "blobs", "sha256")
    os.makedirs(blob_dir, exist_ok=True)
    with open(os.path.join(blob_dir, digest.split(":", 1)[1]), "wb") as f:
        f.write(data)
    return digest


def build_image(layers=(1024, 300_000, 2_000_000), seed=0, labels: dict | None = None,
                architecture: str = "amd64", os_name: str = "linux", variant: str | None = None) -> dict:
    """
    Build (in memory) an OCI image: layers, config and manifest.

    Returns a dict with ``manifest_digest``, ``manifest_bytes``, ``manifest``,
    ``config_digest``, ``config_bytes``, ``layers`` (list of dicts with
    ``digest``, ``size``, ``diff_id``, ``mediaType``, ``bytes``) and ``blobs``
    (digest -> bytes, for the config and every layer).
    """
    layer_objs = [make_layer(size, f"{seed}-{i}") for i, size in enumerate(layers)]
    config = {
        "architecture": architecture,
        "os": os_name,
        **({"variant": variant} if variant else {}),
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": dict(labels or {"izreg.test.seed": str(seed)}),
        },
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layer_objs]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"izreg e2e layer {i}"}
                    for i in range(len(layer_objs))],
    }
    config_bytes = canonical_json(config)
    config_digest = sha256_digest(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": l["mediaType"], "digest": l["digest"], "size": l["size"]}
                   for l in layer_objs],
    }
    manifest_bytes = canonical_json(manifest)
    blobs = {config_digest: config_bytes}
    for l in layer_objs:
        blobs[l["digest"]] = l["bytes"]
    return {
        "manifest": manifest,
        "manifest_bytes": manifest_bytes,
        "manifest_digest": sha256_digest(manifest_bytes),
        "config": config,
        "config_bytes": config_bytes,
        "config_digest": config_digest,
        "layers": layer_objs,
        "blobs": blobs,
    }


def build_layout(path, tag: str = "v1", layers=(1024, 300_000, 2_000_000), seed=0) -> dict:
    """
    Write an image into the OCI layout at C{path} (created if needed) under
    C{tag}. Calling it again on the same path adds another tagged image
    (a tag already in index.json is replaced).

    Returns what L{build_image} returns plus ``path`` and ``tag``.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    image = build_image(layers=layers, seed=seed)
    for data in image["blobs"].values():
        _write_blob(path, data)
    _write_blob(path, image["manifest_bytes"])

    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    index_path = os.path.join(path, "index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if (m.get("annotations") or {}).get(REF_NAME) != tag]
    index["manifests"].append({
        "mediaType": OCI_MANIFEST,
        "digest": image["manifest_digest"],
        "size": len(image["manifest_bytes"]),
        "annotations": {REF_NAME: tag},
    })
    with open(index_path, "wb") as f:
        f.write(canonical_json(index))

    image["path"] = path
    image["tag"] = tag
    return image


def build_index_layout(path, tag: str = "multi", platforms=(("amd64", None), ("arm64", "v8")),
                       layers=(2048, 40_000), seed=0) -> dict:
    """
    Write a multi-platform image into the OCI layout at C{path}: one image per
    C{(architecture, variant)} (os linux) and an OCI image index over them,
    tagged C{tag}. Returns ``index_digest``, ``index_bytes``, ``index`` and
    ``images`` (one L{build_image} result per platform, with ``platform``).
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    images = []
    for i, (arch, variant) in enumerate(platforms):
        image = build_image(layers=layers, seed=f"{seed}-{arch}-{i}", architecture=arch, variant=variant)
        for data in image["blobs"].values():
            _write_blob(path, data)
        _write_blob(path, image["manifest_bytes"])
        image["platform"] = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        images.append(image)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": im["manifest_digest"],
                       "size": len(im["manifest_bytes"]), "platform": im["platform"]} for im in images],
    }
    index_bytes = canonical_json(index)
    index_digest = _write_blob(path, index_bytes)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": OCI_INDEX, "digest": index_digest, "size": len(index_bytes),
        "annotations": {REF_NAME: tag},
    }]}
    with open(os.path.join(path, "index.json"), "wb") as f:
        f.write(canonical_json(top))
    return {"path": path, "tag": tag, "index": index, "index_bytes": index_bytes,
            "index_digest": index_digest, "images": images}


def read_layout_blob(path, digest: str) -> bytes:
    """The bytes of C{digest} in the OCI layout at C{path}."""
    alg, hexpart = digest.split(":", 1)
    with open(os.path.join(os.fspath(path), "blobs", alg, hexpart), "rb") as f:
        return f.read()


def layout_manifest_digest(path, tag: str) -> str:
    """The manifest digest tagged C{tag} in the layout's index.json."""
    with open(os.path.join(os.fspath(path), "index.json")) as f:
        index = json.load(f)
    for m in index["manifests"]:
        if (m.get("annotations") or {}).get(REF_NAME) == tag:
            return m["digest"]
    raise KeyError(tag)
