"""Fixtures of the container runtime tests: a real dockerd, a real registry, release images.

Docker is the machine's own dockerd (``deploy/setup.sh --dev`` installs and starts it, and
builds the runtime base ``edgefleet/runtime:latest``); the registry is Debian's
``docker-registry`` on a free loopback port (dockerd talks plain http to 127.0.0.1). Tests skip,
saying why, where either is missing. The containers and images a test makes are removed after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import pytest

from edgefleet.agent import containers
from edgefleet.common import digests, oci, signing, wire
from edgefleet.common import types as t
from edgefleet.controller import images
from tests.agent.conftest import (  # the fixtures: the tests here use them too
    RunningAgent,
    StartAgent,
    artifacts,  # noqa: F401
    signer,  # noqa: F401
    spawn,  # noqa: F401
    start_agent,  # noqa: F401
    watch,  # noqa: F401
)
from tests.agent.helpers import ArtifactServer, Release, Signer, Watcher
from tests.oci.conftest import Registry, start_registry

REPO = "edgefleet/digits"
# what the container_agent fixture gives: an in-process agent and a watcher on its device
ContainerAgent = tuple[RunningAgent, Watcher]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker is not available ({exc}); deploy/setup.sh --dev starts dockerd")
    try:
        client.images.get(images.RUNTIME_BASE)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.skip(
            f"the runtime base {images.RUNTIME_BASE} is missing: run deploy/setup.sh --dev "
            "(or deploy/docker/runtime-image.sh)"
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    port, proc = start_registry(tmp_path_factory.mktemp("registry"))
    yield Registry(port, proc)
    proc.terminate()
    proc.wait(timeout=10)


class Images:
    """Builds and pushes release images as the controller does; removes what a test made."""

    def __init__(self, client: Any, registry: Registry) -> None:
        self.client = client
        self.target = oci.RegistryRef.parse(f"{registry.host}/{REPO}")
        self.source = f"oci://{registry.host}/{REPO}"
        self.devices: list[str] = []  # whose containers and images go at the end
        self._tags: list[str] = []

    def build(self, model: bytes, *, version: str, golden: bytes = b"") -> images.BuiltImage:
        built = images.build_release_image(
            self.client, t.ReleaseRef("digits", version), model=model, golden=golden
        )
        self._tags.append(built.tag)
        return built

    def push(self, manifest: t.Manifest) -> str:
        return images.push_image(self.client, manifest, self.target)

    def release(
        self,
        by: Signer,
        model: bytes,
        *,
        version: str,
        health: t.HealthPolicy | None = None,
    ) -> Release:
        """``model`` built into an image, signed as a container release and pushed."""
        built = self.build(model, version=version)
        plain = by.release(model, version=version, health=health)
        release = container_release(by, plain, built.digest)
        self.push(release.manifest)
        return release

    def send(
        self, w: Watcher, by: Signer, server: ArtifactServer, release: Release, generation: int
    ) -> None:
        """Act as the controller: the model blob on the artifact server (it still comes from
        there), a desired state naming this registry as a source."""
        server.publish(release)
        w.publish_desired(
            by.desired(release, device_id=w.device_id, generation=generation, sources=[self.source])
        )

    def ours(self, device_id: str) -> list[Any]:
        """The device's containers, running or not. The SDK lists, then inspects each: one the
        agent removes in between is a 404, so the listing is taken again (the agent removes a
        rolled-back release's container while the tests look)."""
        filters = {"label": f"{containers.LABEL_DEVICE}={device_id}"}
        for _ in range(4):
            with contextlib.suppress(docker.errors.NotFound):
                return list(self.client.containers.list(all=True, filters=filters))
        return list(self.client.containers.list(all=True, filters=filters))

    def cleanup(self) -> None:
        for device_id in self.devices:
            for c in self.ours(device_id):
                c.remove(force=True)
            repo = containers.agent_tag(device_id, "")[0]
            for image in self.client.images.list(name=repo):
                for tag in image.tags:
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.images.remove(tag)
        for tag in self._tags:
            with contextlib.suppress(docker.errors.APIError):
                self.client.images.remove(tag, force=True)


@pytest.fixture
def release_images(docker_client: Any, registry: Registry) -> Iterator[Images]:
    made = Images(docker_client, registry)
    yield made
    made.cleanup()


@pytest.fixture
def container_agent(
    start_agent: StartAgent,  # noqa: F811 - the fixture imported above
    watch: Callable[[str], Watcher],  # noqa: F811
    release_images: Images,
) -> ContainerAgent:
    """An in-process agent whose containers and images go at the end, and a watcher on it."""
    a = start_agent()
    release_images.devices.append(a.device_id)
    return a, watch(a.device_id)


def container_release(by: Signer, release: Release, image: str) -> Release:
    """``release`` re-signed as a container release served by ``image``."""
    manifest = replace(release.manifest, runtime="container", image=image)
    payload = wire.encode_manifest(manifest)
    env = signing.sign(payload, signing.MANIFEST_TYPE, by.key)
    return Release(manifest, env, digests.of_bytes(payload), release.model, release.golden)
