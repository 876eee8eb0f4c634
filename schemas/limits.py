"""Hard limits in one place: inbound events (README "Input limits") and dead letters (docs/deploying.md)."""

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

# Dead letters are outputs, so their size is ours to bound: a Kafka with its default
# `message.max.bytes` (1 MiB) must accept every one, or the publish loop would retry forever.
DEAD_LETTER_ORIGINAL_BYTES = 256 * 1024
"""Head of an input value kept in its dead letter (base64: ~341 KiB); its size and SHA-256 are kept whole."""
DEAD_LETTER_KEY_BYTES = 1024
"""Head of an input key kept in its dead letter (keys are ids; a longer one is hostile)."""
MAX_DEAD_LETTER_BYTES = 512 * 1024
"""Bound on an encoded `DeadLetter`, whatever the input: half of Kafka's default `message.max.bytes`."""
