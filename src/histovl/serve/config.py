"""`ServeConfig`: what `histovl serve` binds to and how much it keeps in memory.

The security rules it carries are checked before anything listens (`check_binding`): the server
binds the loopback interface by default, and any other address needs a token (docs/serve.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from histovl.errors import HistovlError

#: Host names that mean this machine only.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

#: Thumbnail sides the server renders (requests snap to the nearest, so the cache stays bounded).
THUMBNAIL_SIZES = (96, 160, 256, 512, 1024)


@dataclass(frozen=True)
class ServeConfig:
    """How `histovl serve` runs.

    Attributes:
        host: the address to bind; anything but a loopback address needs `token`.
        port: the TCP port.
        token: a shared secret every request must carry (``Authorization: Bearer``, the
            ``histovl_token`` cookie, or ``?token=`` once, which sets the cookie). None: no token,
            allowed on loopback only.
        roots_only: serve no file outside the roots, not even the images a run or index under
            them names (its data set elsewhere); by default those are shown, decoded and
            re-encoded, never sent as they are.
        tile_cache_mb: memory for encoded DeepZoom tiles and thumbnails (least recently used
            dropped first).
        page_size: images per page on a run page.
        low_margin: the run page's default low-margin cut-off (top-1 minus top-2 probability).
        jpeg_quality: quality of the tiles, thumbnails and large views sent.
    """
    NO_RUNTIME_REASON: ClassVar[str] = (  # docs/runtime.md
        "it encodes one search query at a time, where an export on the first request and a parity gate on "
        "one input cost more than they save")

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    roots_only: bool = False
    tile_cache_mb: int = 96
    page_size: int = 200
    low_margin: float = 0.2
    jpeg_quality: int = 80

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0-65535, not {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise HistovlError("--token must be at least 8 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        if self.tile_cache_mb < 0 or self.page_size < 1:
            raise ValueError("tile_cache_mb must be >= 0 and page_size >= 1")
        if not 0.0 <= self.low_margin <= 1.0:
            raise ValueError(f"low_margin must be in [0, 1], not {self.low_margin}")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the names of localhost."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(config: ServeConfig) -> None:
    """Refuse to listen beyond this machine without a token (before anything binds)."""
    if not is_loopback(config.host) and not config.token:
        raise HistovlError(
            f"--host {config.host} makes the server reachable from other machines; give --token "
            "(or $HISTOVL_SERVE_TOKEN) so every request must carry it, or keep the default "
            "127.0.0.1 and use SSH port forwarding (docs/serve.md)"
        )
