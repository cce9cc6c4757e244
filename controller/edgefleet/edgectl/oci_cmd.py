"""``edgectl release export`` and ``edgectl release push``: a release as an OCI artifact.

Both fetch the release's blobs from the controller's ``ArtifactService`` into an OCI image
layout (``oci_layout``) and verify it; ``push`` then sends the layout to a
registry. Registry credentials come from ``EDGEFLEET_REGISTRY_USER`` and
``EDGEFLEET_REGISTRY_PASSWORD``. A container release's image is pushed too, through this
host's Docker (``images.push_image``), to ``REPO/container:VERSION`` of the same registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.common.errors import NotFoundError
from edgefleet.edgectl import output, shell

# docker, numpy, grpc, protobuf and rich: loaded when a command runs, not for --help
if TYPE_CHECKING:
    from rich.progress import Progress

    from edgefleet.edgectl import oci_layout as layout
    from edgefleet.v1 import controller_pb2 as pb

ReleaseArg = Annotated[
    str, typer.Argument(help="The release NAME:VERSION.", metavar="NAME:VERSION")
]
Json = shell.Json


def _progress(*, quiet: bool) -> Progress:
    return output.transfer_progress(quiet=quiet)


def _find(ctx: typer.Context, text: str) -> pb.ReleaseInfo:
    from edgefleet.common.types import ReleaseRef  # not for --help

    ref = ReleaseRef.parse(text)
    with shell.controller(ctx) as client:
        for info in client.list_releases(ref.name):
            if info.version == ref.version:
                return info
    raise NotFoundError("release", str(ref))


def _export(
    ctx: typer.Context, info: pb.ReleaseInfo, root: Path, *, tag: str, quiet: bool
) -> layout.LayoutRelease:
    from edgefleet.edgectl import oci_layout as layout
    from edgefleet.edgectl.client import api_tls

    m = info.manifest
    total = m.model_size + m.golden_size
    with _progress(quiet=quiet) as progress:
        task = progress.add_task(f"exporting {info.name}:{info.version}", total=total)
        return layout.export_release(
            info,
            root,
            artifacts_target=shell.settings(ctx).controller,
            tag=tag,
            on_bytes=lambda n: progress.advance(task, n),
            tls=api_tls(shell.settings(ctx).ca_file),
        )


def export(
    ctx: typer.Context,
    release: ReleaseArg,
    *,
    oci_dir: Annotated[
        Path,
        typer.Option(
            "--oci",
            help="Directory to write the OCI image layout to (created; rerunning resumes).",
            file_okay=False,
            metavar="DIR",
        ),
    ],
    as_json: Json = False,
) -> None:
    """Export release NAME:VERSION as an OCI image layout directory.

    The layout holds one OCI artifact (type application/vnd.edgefleet.release.v1) whose
    layers are the signed manifest, the model and the golden set, tagged VERSION. Every blob
    is verified after the download; the same release always gives the same manifest digest.
    """
    info = _find(ctx, release)
    from edgefleet.common import oci  # urllib.request: not for --help

    back = _export(ctx, info, oci_dir, tag=oci.sanitize_tag(info.version), quiet=as_json)
    if as_json:
        output.print_json(
            {"release": release, "dir": str(oci_dir), "manifest_digest": back.manifest_digest}
        )
        return
    output.console.print(f"exported {release} to {oci_dir}", markup=False)
    output.console.print(f"  manifest: {back.manifest_digest} (tag {back.tag})", markup=False)


def push(
    ctx: typer.Context,
    release: ReleaseArg,
    *,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Registry and repository, HOST[:PORT]/REPO[:TAG]; TAG defaults to the "
            "release's version (semver '+' becomes '_').",
            metavar="HOST:PORT/REPO[:TAG]",
        ),
    ],
    plain_http: Annotated[
        bool,
        typer.Option(
            "--plain-http",
            help="Talk http, not https (always so for 127.0.0.1 and localhost).",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Push release NAME:VERSION to an OCI registry (distribution, Harbor, GHCR, ...).

    Exports the release to a temporary layout, verifies it, uploads the blobs the registry
    lacks and then the manifest under TAG. Credentials, when the registry wants them, come
    from EDGEFLEET_REGISTRY_USER and EDGEFLEET_REGISTRY_PASSWORD. A container release's
    image (built on the controller host; run this there) goes to REPO/container:VERSION,
    where devices given oci://HOST[:PORT]/REPO pull it.
    """
    import tempfile

    from edgefleet.common import oci, wire
    from edgefleet.controller import images
    from edgefleet.edgectl import oci_layout as layout

    target = oci.RegistryRef.parse(to, plain_http=plain_http)
    info = _find(ctx, release)
    tag = target.tag or oci.sanitize_tag(info.version)
    registry = oci.Registry(target, auth=oci.credentials())
    with tempfile.TemporaryDirectory(prefix="edgectl-oci-") as tmp:
        back = _export(ctx, info, Path(tmp), tag=tag, quiet=as_json)
        total = sum(x.size for x in back.layers) + len(oci.EMPTY_BYTES)
        uploaded: list[str] = []
        with _progress(quiet=as_json) as progress:
            task = progress.add_task(f"pushing to {target.host}/{target.repo}", total=total)
            digest = layout.push_layout(
                back,
                registry,
                tag=tag,
                on_blob=lambda layer, up: uploaded.append(layer.digest) if up else None,
                on_bytes=lambda n: progress.advance(task, n),
            )
    where = f"{target.host}/{target.repo}:{tag}"
    image = ""
    if info.manifest.image:  # a container release: its signed image goes next to it
        image = images.push_image(images.client(), wire.manifest_from_pb(info.manifest), target)
    if as_json:
        output.print_json(
            {
                "release": release,
                "pushed": where,
                "manifest_digest": digest,
                "blobs_uploaded": len(uploaded),
            }
            | ({"image": image, "image_digest": info.manifest.image} if image else {})
        )
        return
    output.console.print(f"pushed {release} to {where}", markup=False)
    output.console.print(
        f"  manifest: {digest} ({len(uploaded)} of {len(back.layers) + 1} blobs uploaded)",
        markup=False,
    )
    if image:
        output.console.print(f"  image:    {image} ({info.manifest.image})", markup=False)
