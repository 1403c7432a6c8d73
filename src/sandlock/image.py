"""Container images as a sandbox's root: `Sandbox(image=pull_image(ref))`.

Not implemented yet in this version of sandlock: the types exist so code
written for the reference SDK imports; `pull_image` raises
NotImplementedError, and a Sandbox with an `image` refuses to run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageConfig:
    """How an image expects to be run (from its OCI config)."""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()        # "KEY=VALUE" entries
    working_dir: str | None = None

    def default_cmd(self) -> list[str]:
        """The entrypoint then the cmd; /bin/sh when the image names neither."""
        return [*self.entrypoint, *self.cmd] or ["/bin/sh"]


@dataclass(frozen=True)
class Image:
    """An unpacked image: its root filesystem and its run configuration."""
    rootfs: str
    config: ImageConfig = field(default_factory=ImageConfig)


def pull_image(reference: str, cache_dir: str | os.PathLike | None = None) -> Image:
    """Fetch and unpack a container image. Not implemented yet."""
    raise NotImplementedError(
        "pull_image: container images are not implemented yet in this version of sandlock")
