"""Container images of releases, built and pushed through the controller host's dockerd.

A container release (``runtime = "container"``) is served on devices by an OCI image whose
content digest (the sha256 of its config, Docker's image id) is signed in the manifest:

* ``build_release_image``: the shared runtime base (``edgefleet/runtime:latest``, made by
  ``deploy/docker/runtime-image.sh``: Debian, Python, ONNX Runtime and EdgeFleet's model
  server) plus one layer holding the model and the golden data, so two releases share every
  layer but the last. Files in that layer have fixed times and owners, so the same model gives
  the same layer digest, wherever it is built.
* ``adopt_image``: ``--image REF``, the user's own image (their pre/post-processing around the
  same ``InferenceService`` contract on port 50051), taken as it is in the local dockerd.
* ``push_image``: the image to ``HOST[:PORT]/REPO/container:TAG`` (next to the release's OCI
  artifact in ``REPO``, where a device's ``oci://HOST[:PORT]/REPO`` source sends it), checking
  first that the local image is the signed one.

Docker errors become ``InvalidInputError`` (the request cannot be served as asked: no image,
no base) or ``TransientError`` (dockerd or the registry away).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from edgefleet.common import oci
from edgefleet.common import types as t
from edgefleet.common.errors import InvalidInputError, TransientError

log = logging.getLogger(__name__)

RUNTIME_BASE = "edgefleet/runtime:latest"
RELEASE_REPO = "edgefleet/release"
IMAGE_SUFFIX = "container"
LABEL_RELEASE = "dev.edgefleet.release"


@dataclass(frozen=True)
class BuiltImage:
    digest: str  # sha256:<hex> of the image config: Docker's image id
    size: int
    tag: str


def client() -> Any:
    """The local dockerd (``DOCKER_HOST`` or the default socket)."""
    try:
        c = docker.from_env(timeout=300)
        c.ping()
    except docker.errors.DockerException as exc:
        raise TransientError(f"Docker does not answer on the controller host: {exc}") from exc
    return c


def _context(ref: t.ReleaseRef, *, base: str, model: bytes, golden: bytes) -> io.BytesIO:
    dockerfile = (
        f"FROM {base}\n"
        f'LABEL {LABEL_RELEASE}="{ref}"\n'
        f'ENV EDGEFLEET_RELEASE="{ref}"\n'
        "COPY model /model\n"
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        files = {"Dockerfile": dockerfile, "model/model.onnx": model}
        if golden:
            files["model/golden.npz"] = golden
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_release_image(
    docker_client: Any, ref: t.ReleaseRef, *, model: bytes, golden: bytes, base: str = RUNTIME_BASE
) -> BuiltImage:
    """``base`` + one layer with ``model`` (``/model/model.onnx``) and ``golden``."""
    try:
        docker_client.images.get(base)
    except docker.errors.ImageNotFound as exc:
        raise InvalidInputError(
            f"the runtime base image {base} is not on the controller host: build it with "
            "deploy/docker/runtime-image.sh (deploy/setup.sh --dev does)"
        ) from exc
    tag = f"{RELEASE_REPO}/{ref.name}:{oci.sanitize_tag(ref.version)}"
    try:
        image, _ = docker_client.images.build(
            fileobj=_context(ref, base=base, model=model, golden=golden),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as exc:
        raise InvalidInputError(f"building the image of {ref} failed: {exc}") from exc
    except docker.errors.APIError as exc:
        raise TransientError(f"building the image of {ref} failed: {exc}") from exc
    log.info("built %s (%s) for %s", tag, image.id, ref)
    return BuiltImage(digest=image.id, size=int(image.attrs.get("Size", 0)), tag=tag)


def adopt_image(docker_client: Any, ref: t.ReleaseRef, image_ref: str) -> BuiltImage:
    """The user's own image ``image_ref`` (in the local dockerd), tagged for ``ref``."""
    try:
        image = docker_client.images.get(image_ref)
    except docker.errors.ImageNotFound as exc:
        raise InvalidInputError(
            f"no image {image_ref!r} on the controller host (docker pull or build it first)"
        ) from exc
    tag = f"{RELEASE_REPO}/{ref.name}:{oci.sanitize_tag(ref.version)}"
    repo, _, version = tag.rpartition(":")
    image.tag(repo, version)
    return BuiltImage(digest=image.id, size=int(image.attrs.get("Size", 0)), tag=tag)


def image_target(target: oci.RegistryRef, version: str) -> tuple[str, str]:
    """(repository, tag) of a release image in the registry of an artifact push ``target``:
    always the release's version, which is what devices ask for."""
    return f"{target.host}/{target.repo}/{IMAGE_SUFFIX}", oci.sanitize_tag(version)


def push_image(docker_client: Any, manifest: t.Manifest, target: oci.RegistryRef) -> str:
    """Push the signed image of ``manifest`` next to ``target``; return where it went."""
    try:
        image = docker_client.images.get(manifest.image)
    except docker.errors.ImageNotFound as exc:
        raise InvalidInputError(
            f"the image {manifest.image} of {manifest.ref} is not in this host's Docker: "
            "push from the controller's host"
        ) from exc
    if image.id != manifest.image:
        raise InvalidInputError(
            f"the local image is {image.id}, the release signs {manifest.image}"
        )
    repository, tag = image_target(target, manifest.version)
    image.tag(repository, tag)
    auth = oci.credentials()
    config = {"username": auth[0], "password": auth[1]} if auth else None
    try:
        for line in docker_client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=config
        ):
            if "error" in line:
                raise TransientError(f"pushing {repository}:{tag}: {line['error']}")
    except docker.errors.APIError as exc:
        raise TransientError(f"pushing {repository}:{tag}: {exc}") from exc
    finally:
        with contextlib.suppress(docker.errors.APIError):  # only the push tag, not the image
            docker_client.images.remove(f"{repository}:{tag}", noprune=True)
    return f"{repository}:{tag}"
