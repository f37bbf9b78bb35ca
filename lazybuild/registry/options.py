"""How to reach registries: the options every command shares, light to import.

The CLI reads these before it imports the registry client (httpx and the rest), so a
command can start its filesystem process first and let the two start-ups overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lazybuild.registry.client import RegistryClient


@dataclass(frozen=True)
class RegistryOptions:
    insecure_registries: tuple[str, ...] = ()
    docker_config: Path | None = None

    def client(self) -> RegistryClient:
        from lazybuild.registry.client import RegistryClient

        return RegistryClient(
            insecure_registries=self.insecure_registries, docker_config=self.docker_config
        )
