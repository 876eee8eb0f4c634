"""Hard limits applied to every inbound event, in one place (documented in README)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int = 2 * 1024 * 1024
    max_image_bytes: int = 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_title_chars: int = 512
    max_query_chars: int = 256
    max_impressions: int = 200
    max_attributes: int = 16
    max_attribute_chars: int = 64
    max_id_chars: int = 64
    allowed_image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")


LIMITS = Limits()
