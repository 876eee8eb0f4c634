"""A deterministic hostile-input corpus, and the scenario that pushes it through a running worker.

The corpus mixes hypothesis-generated events (fixed seed, generate phase only, no example database:
the same bytes on every run) with hand-made cases: invalid JSON and UTF-8, wrong types, missing and
unknown fields, NaN/inf literals, huge strings, payloads over the byte limit, deep nesting,
thousands of impressions, bad identifiers, corrupt / truncated / bomb / multi-frame images,
unsupported formats (GIF, BMP, TIFF), path traversal, absolute paths, symlinks and FIFOs under the
image root, and URLs (SSRF). Every case must be dead-lettered with a specific reason. Unknown
product ids in an otherwise valid query log get the letter `unknown_product` and, beside it, an
impression with `status="unknown_product"` in its `QueryScores` (counted as *reported*). Events
that differ from valid ones only by fields their schema version does not define are *accepted*: the
compatibility policy (docs/contracts.md) says a newer producer's added field is ignored, so they
must be scored and never dead-lettered.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from reliability.faults import (
    SERVED_VERSION,
    ScenarioResult,
    Stack,
    WorkerProcess,
    fresh_settings,
    impression_scores,
    lag,
    query_logs,
    read_all,
    seed_state,
    timed,
    wait_until,
)
from schemas import LIMITS, DeadLetter, decode_event, encode
from worker.kafka_io import make_producer

QUERY = "query"
PRODUCT = "product"
ANY = "*"  # any specific reason (the hypothesis cases: which check fires first is not the point)


@dataclass(frozen=True)
class Case:
    """One hostile record: where it goes, its bytes, and the dead-letter reason(s) it must get."""

    path: str  # QUERY or PRODUCT
    category: str
    value: bytes | None
    expect: frozenset[str] = frozenset({ANY})
    reported: bool = False  # also needs `unknown_product` scores beside its dead letter
    key: bytes | None = None
    accepted: bool = False  # valid under the compatibility policy: scored, no dead letter


def _r(*reasons: str) -> frozenset[str]:
    return frozenset(reasons)


# --------------------------------------------------------------------------- templates
# The corpus's event time: current, since the worker dead-letters a query log further than its grace
# (QL_WORKER_EVENT_TIME_GRACE_S, 1 h) from its Kafka record timestamp; fixed once per process, so
# the corpus stays deterministic within a run.
NOW = datetime.now(UTC).replace(microsecond=0).isoformat()


def valid_query(n: int, product_ids: list[str]) -> dict[str, Any]:
    return {
        "event_id": f"h-e{n}",
        "event_time": NOW,
        "query_id": f"h-q{n}",
        "query": "red shirt",
        "variant": "A",
        "impressions": [{"product_id": pid, "position": i + 1} for i, pid in enumerate(product_ids)],
    }


def valid_product(n: int, image: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": f"h-p{n}",
        "event_time": NOW,
        "product_id": f"hp{n}",
        "title": "Blue denim jacket",
        "product_type": "Jackets",
    }
    if image is not None:
        doc["image"] = image
    return doc


def _j(obj: Any) -> bytes:
    """Compact JSON; the stdlib encoder, because hypothesis draws integers beyond 64 bits."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# --------------------------------------------------------------------------- deterministic hypothesis


def draw(strategy: st.SearchStrategy[Any], count: int, seed_value: int) -> list[Any]:
    """`count` examples of `strategy`, identical on every run of the same code (fixed seed, generate phase,
    no database). Hypothesis also mixes in literals it finds in the project's own imported modules, so
    editing those modules can change a few generated cases; the hand-made ones never change."""
    out: list[Any] = []

    @seed(seed_value)
    @hyp_settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out[:count]


JUNK = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
"""Values that are never a string (strict mode: no coercion), for string-typed fields."""

STRING_FIELDS = ("event_id", "query_id", "query", "variant")
BAD_ID_CHARS = " /\\\n\t\x00<>'\"#%&|;$`é中😀"


def _wrong_type(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    def build(args: tuple[int, str, Any]) -> bytes:
        n, name, junk = args
        doc = valid_query(n, product_ids)
        doc[name] = junk
        return _j(doc)

    return st.tuples(st.integers(0, 10**6), st.sampled_from(STRING_FIELDS), JUNK).map(build)


def _bad_impressions(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    position = st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=1001),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
        st.booleans(),
    )
    impressions: st.SearchStrategy[Any] = st.one_of(
        st.just([]),
        st.text(max_size=10),
        st.integers(),
        st.lists(st.integers(), min_size=1, max_size=3),
        position.map(lambda p: [{"product_id": product_ids[0], "position": p}]),
    )

    def build(args: tuple[int, Any]) -> bytes:
        doc = valid_query(args[0], product_ids)
        doc["impressions"] = args[1]
        return _j(doc)

    return st.tuples(st.integers(0, 10**6), impressions).map(build)


def _missing(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    required = ["event_id", "event_time", "query_id", "query", "variant", "impressions"]

    def build(args: tuple[int, list[str]]) -> bytes:
        doc = valid_query(args[0], product_ids)
        for name in args[1]:
            doc.pop(name)
        return _j(doc)

    return st.tuples(st.integers(0, 10**6), st.lists(st.sampled_from(required), min_size=1, unique=True)).map(
        build
    )


def _unknown_fields(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    """Valid logs with fields a newer producer might add, at the top level or in an impression."""
    known = {"schema_version", "event_id", "event_time", "query_id", "query", "user_id", "session_id"}
    known |= {"experiment_id", "variant", "impressions", "product_id", "position", "clicked", "ordered"}
    names = st.text(min_size=1, max_size=20).filter(lambda s: s not in known)

    def build(args: tuple[int, str, Any, bool]) -> bytes:
        n, name, value, nested = args
        doc = valid_query(n, product_ids)
        (doc["impressions"][0] if nested else doc)[name] = value
        return _j(doc)

    return st.tuples(st.integers(0, 10**6), names, JUNK | st.text(max_size=10), st.booleans()).map(build)


def _bad_ids(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    """An identifier with a character outside `[A-Za-z0-9_.:@-]`, or too long, in a random id field."""
    bad = st.one_of(
        st.tuples(st.text(max_size=10), st.sampled_from(BAD_ID_CHARS), st.text(max_size=10)).map(
            lambda t: "a" + t[0] + t[1] + t[2]
        ),
        st.text(alphabet="abc123", min_size=LIMITS.max_id_chars + 1, max_size=300),
        st.sampled_from(["", "-leading-dash", "../../etc/passwd", ".hidden", "_x"]),
    )

    def build(args: tuple[int, str, str]) -> bytes:
        n, where, value = args
        doc = valid_query(n, product_ids)
        if where == "product_id":
            doc["impressions"][0]["product_id"] = value
        else:
            doc[where] = value
        return _j(doc)

    fields = st.sampled_from(["event_id", "query_id", "user_id", "session_id", "product_id"])
    return st.tuples(st.integers(0, 10**6), fields, bad).map(build)


def _huge_strings(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    def build(args: tuple[int, str, int]) -> bytes:
        n, name, size = args
        doc = valid_query(n, product_ids)
        doc[name] = "x" * size
        return _j(doc)

    sizes = st.integers(min_value=LIMITS.max_query_chars + 1, max_value=200_000)
    return st.tuples(st.integers(0, 10**6), st.sampled_from(["query", "variant", "event_id"]), sizes).map(
        build
    )


def _raw_bytes() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and printable junk that is almost JSON."""
    almost = st.text(alphabet='{}[]":,0123456789.eE+-truefalsn ', max_size=60).map(str.encode)
    return st.one_of(st.binary(max_size=400), almost)


def _bad_utf8(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    invalid = st.sampled_from(
        [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
    )

    def build(args: tuple[int, bytes]) -> bytes:
        doc = _j(valid_query(args[0], product_ids))
        return doc.replace(b'"red shirt"', b'"red ' + args[1] + b' shirt"')

    return st.tuples(st.integers(0, 10**6), invalid).map(build)


def _deep(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    def build(args: tuple[int, int, str]) -> bytes:
        n, depth, kind = args
        nested = b"[" * depth + b"]" * depth if kind == "list" else b'{"a":' * depth + b"1" + b"}" * depth
        doc = _j(valid_query(n, product_ids))
        return doc.replace(b'"red shirt"', nested)

    return st.tuples(st.integers(0, 10**6), st.integers(50, 50_000), st.sampled_from(["list", "dict"])).map(
        build
    )


def _many_impressions(product_ids: list[str]) -> st.SearchStrategy[bytes]:
    def build(args: tuple[int, int]) -> bytes:
        doc = valid_query(args[0], product_ids)
        doc["impressions"] = [{"product_id": f"p{i}", "position": 1 + i % 1000} for i in range(args[1])]
        return _j(doc)

    return st.tuples(st.integers(0, 10**6), st.integers(LIMITS.max_impressions + 1, 5000)).map(build)


def _unknown_products() -> st.SearchStrategy[bytes]:
    """Valid query logs whose products have no embedding: dead-lettered and reported."""
    ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=20).map(
        lambda s: f"nosuch-{s}"
    )

    def build(args: tuple[int, list[str]]) -> bytes:
        return _j(valid_query(args[0] + 10**7, args[1]))

    return st.tuples(st.integers(0, 10**6), st.lists(ids, min_size=1, max_size=5, unique=True)).map(build)


# --------------------------------------------------------------------------- hand-made cases


def _png(width: int, height: int, frames: int = 1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    imgs = [Image.new("RGB", (width, height), (i * 40, 0, 0)) for i in range(frames)]
    if frames > 1:
        imgs[0].save(buf, "PNG", save_all=True, append_images=imgs[1:])
    else:
        imgs[0].save(buf, "PNG")
    return buf.getvalue()


def _image(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def _noise(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def _noisy_png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes(
        "RGB", (size, size), bytes(random.Random(size).randrange(256) for _ in range(size * size * 3))
    ).save(buf, "PNG")
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A grayscale PNG whose header claims width x height pixels, built by hand in a few KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    raw = b"".join(comp.compress(row) for _ in range(min(height, 64))) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _inline(n: int, data: bytes) -> bytes:
    return _j(valid_product(n, {"data": base64.b64encode(data).decode()}))


def _by_path(n: int, path: str) -> bytes:
    return _j(valid_product(n, {"path": path}))


def prepare_image_root(root: Path) -> None:
    """Files the path cases point at: a GIF named .jpg, an oversize file, a symlink out, a FIFO, a dir."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ok").mkdir(exist_ok=True)
    (root / "ok" / "disguised.jpg").write_bytes(_image("GIF"))
    (root / "ok" / "huge.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * (LIMITS.max_image_bytes + 10))
    (root / "ok" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _noise(200))
    links = {"passwd.jpg": "/etc/passwd", "up.jpg": "../../../../etc/hostname"}
    for name, target in links.items():
        if not (root / "ok" / name).is_symlink():
            (root / "ok" / name).symlink_to(target)
    if not (root / "ok" / "pipe.jpg").exists():
        os.mkfifo(root / "ok" / "pipe.jpg")
    (root / "ok" / "dir.jpg").mkdir(exist_ok=True)


def hand_made(product_ids: list[str]) -> list[Case]:
    q = valid_query

    def fields(n: int, name: str, changed: dict[str, Any], reason: str) -> Case:
        """A valid query log with some fields replaced."""
        return Case(QUERY, name, _j(q(n, product_ids) | changed), _r(reason))

    def position(n: int, name: str, literal: bytes, reason: str) -> Case:
        """A valid query log whose first impression's position is written as `literal`."""
        value = _j(q(n, product_ids)).replace(b'"position":1', b'"position":' + literal)
        return Case(QUERY, name, value, _r(reason))

    cases = [
        Case(QUERY, "null value (tombstone)", None, _r("null_value"), key=b"tombstone"),
        Case(QUERY, "empty", b"", _r("invalid_json")),
        Case(QUERY, "truncated JSON", _j(q(1, product_ids))[:40], _r("invalid_json")),
        Case(QUERY, "JSON array", b"[1,2,3]", _r("not_an_object")),
        Case(QUERY, "JSON string", b'"hello"', _r("not_an_object")),
        Case(
            QUERY, "BOM + JSON", b"\xef\xbb\xbf" + _j(q(2, product_ids)), _r("invalid_json", "invalid_utf8")
        ),
        Case(QUERY, "latin-1 text", _j(q(3, product_ids)).replace(b"red", b"r\xe9d"), _r("invalid_utf8")),
        Case(
            QUERY,
            "lone surrogate escape",
            _j(q(4, product_ids)).replace(b"red", b"\\ud800"),
            _r("invalid_json", "invalid_utf8", "string_unicode"),
        ),
        Case(
            QUERY,
            "over the byte limit",
            b'{"query": "' + b"x" * (LIMITS.max_event_bytes + 10) + b'"}',
            _r("too_large"),
        ),
        fields(5, "valid JSON over the byte limit", {"pad": "y" * LIMITS.max_event_bytes}, "too_large"),
        Case(QUERY, "deep nesting 100k", b"[" * 100_000 + b"]" * 100_000, _r("invalid_json")),
        Case(QUERY, "5000 impressions", _j(q(6, [f"p{i}" for i in range(5000)])), _r("too_long")),
        Case(
            QUERY,
            "duplicate impressions",
            _j(q(7, [product_ids[0], product_ids[0]])),
            _r("duplicate_impression"),
        ),
        Case(QUERY, "no impressions", _j(q(8, [])), _r("too_short")),
        fields(9, "schema_version 2", {"schema_version": 2}, "unsupported_schema_version"),
        fields(10, "naive event_time", {"event_time": "2024-05-01T12:00:00"}, "timezone_aware"),
        fields(11, "event_time garbage", {"event_time": "yesterday"}, "datetime_from_date_parsing"),
        fields(12, "whitespace query", {"query": "   \t "}, "string_too_short"),
        position(13, "position NaN literal", b"NaN", "invalid_json"),
        position(14, "position Infinity literal", b"Infinity", "invalid_json"),
        position(15, "position 1e999", b"1e999", "invalid_json"),
        position(16, "position -Infinity", b"-Infinity", "invalid_json"),
        position(17, "position as float", b"1.0", "int_type"),
        position(18, "position as string", b'"1"', "int_type"),
        position(19, "clicked as string", b'1,"clicked":"yes"', "bool_type"),
        fields(20, "variant with path", {"variant": "../A"}, "string_pattern_mismatch"),
        fields(21, "control chars in id", {"query_id": "a\u0000b"}, "string_pattern_mismatch"),
        fields(22, "log-injection id", {"event_id": 'x"}\n{"level":"error"'}, "string_pattern_mismatch"),
        Case(
            QUERY,
            "prototype pollution key (ignored)",
            _j(q(23, product_ids) | {"__proto__": {"admin": True}}),
            frozenset(),
            accepted=True,
        ),
        Case(
            QUERY,
            "duplicate JSON keys (last wins: wrong type)",
            _j(q(24, product_ids))[:-1] + b',"query":5}',
            _r("string_type"),
        ),
        fields(25, "query of 100k chars", {"query": "a" * 100_000}, "string_too_long"),
        fields(26, "null query", {"query": None}, "string_type"),
    ]
    # a few unknown ids with hostile-looking but valid identifiers: dead-lettered and reported
    for i, pid in enumerate(["nosuch-1", "SELECT.1", "a@b:c", "x" * LIMITS.max_id_chars]):
        value = _j(q(90 + i, [pid]))
        cases.append(Case(QUERY, "unknown product id", value, _r("unknown_product"), reported=True))

    p = PRODUCT
    jpeg, png = _image("JPEG"), _image("PNG")
    noisy = _noisy_png(64)
    cases += [
        Case(
            p,
            "corrupt JPEG (magic + noise)",
            _inline(1, b"\xff\xd8\xff\xe0" + _noise(300)),
            _r("image_decode_error", "unsupported_image_format"),
        ),
        Case(p, "truncated JPEG", _inline(2, jpeg[: len(jpeg) // 2]), _r("image_decode_error")),
        Case(p, "truncated PNG", _inline(3, noisy[: len(noisy) // 2]), _r("image_decode_error")),
        Case(
            p,
            "corrupt PNG chunk",
            _inline(4, png[:40] + b"\x00" * 20 + png[60:]),
            _r("image_decode_error", "unsupported_image_format"),
        ),
        Case(
            p,
            "WEBP magic + garbage",
            _inline(5, b"RIFF\x10\x00\x00\x00WEBPVP8 " + _noise(64)),
            _r("image_decode_error", "unsupported_image_format"),
        ),
        Case(
            p,
            "decompression bomb 20000x20000",
            _inline(6, _png_bomb(20_000, 20_000)),
            _r("decompression_bomb"),
        ),
        Case(
            p, "decompression bomb 5000x5000", _inline(7, _png_bomb(5_000, 5_000)), _r("decompression_bomb")
        ),
        Case(p, "animated PNG", _inline(8, _png(8, 8, frames=3)), _r("unsupported_image_format")),
        Case(p, "GIF inline", _inline(9, _image("GIF")), _r("unsupported_image_format")),
        Case(p, "BMP inline", _inline(10, _image("BMP")), _r("unsupported_image_format")),
        Case(p, "TIFF inline", _inline(11, _image("TIFF")), _r("unsupported_image_format")),
        Case(
            p,
            "SVG inline",
            _inline(12, b'<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>'),
            _r("unsupported_image_format"),
        ),
        Case(
            p,
            "image over 1 MiB inline",
            _inline(13, b"\xff\xd8\xff" + b"\0" * (LIMITS.max_image_bytes + 1)),
            _r("image_too_large"),
        ),
        Case(p, "invalid base64", _j(valid_product(14, {"data": "!!!not base64!!!"})), _r("invalid_base64")),
        Case(
            p,
            "both data and path",
            _j(valid_product(15, {"data": base64.b64encode(jpeg).decode(), "path": "a.jpg"})),
            _r("image_source"),
        ),
        Case(p, "empty image object", _j(valid_product(16, {})), _r("image_source")),
        Case(p, "path traversal", _by_path(20, "../../etc/passwd"), _r("path_traversal")),
        Case(p, "path traversal inside", _by_path(21, "ok/../../../etc/shadow"), _r("path_traversal")),
        Case(p, "backslash traversal", _by_path(22, "..\\..\\windows\\win.ini"), _r("path_traversal")),
        Case(p, "absolute path", _by_path(23, "/etc/passwd"), _r("absolute_path")),
        Case(p, "windows absolute path", _by_path(24, "C:/Windows/win.ini"), _r("absolute_path")),
        Case(p, "UNC path", _by_path(25, "\\\\evil\\share\\x.jpg"), _r("absolute_path")),
        Case(
            p,
            "URL http (SSRF metadata)",
            _by_path(26, "http://169.254.169.254/latest/meta-data/"),
            _r("url_not_allowed"),
        ),
        Case(p, "URL https", _by_path(27, "https://example.com/x.jpg"), _r("url_not_allowed")),
        Case(p, "URL file://", _by_path(28, "file:///etc/passwd"), _r("url_not_allowed")),
        Case(p, "URL gopher", _by_path(29, "gopher://127.0.0.1:6379/_FLUSHALL"), _r("url_not_allowed")),
        Case(p, "data: URI", _by_path(30, "data:image/png;base64,AAAA"), _r("url_not_allowed")),
        Case(p, "URL without scheme slashes", _by_path(31, "http:169.254.169.254"), _r("url_not_allowed")),
        Case(p, "null byte in path", _by_path(32, "ok/a.jpg\u0000.png"), _r("unsafe_path")),
        Case(p, "path with spaces", _by_path(33, "ok/a b.jpg"), _r("unsafe_path")),
        Case(p, "path too long", _by_path(34, "a" * 300), _r("string_too_long")),
        Case(p, "missing image file", _by_path(35, "ok/nope.jpg"), _r("image_not_found")),
        Case(p, "symlink to /etc/passwd", _by_path(36, "ok/passwd.jpg"), _r("path_traversal")),
        Case(p, "symlink escaping root", _by_path(37, "ok/up.jpg"), _r("path_traversal")),
        Case(p, "FIFO under the root", _by_path(38, "ok/pipe.jpg"), _r("image_unreadable")),
        Case(p, "directory as image", _by_path(39, "ok/dir.jpg"), _r("image_unreadable")),
        Case(p, "GIF named .jpg", _by_path(40, "ok/disguised.jpg"), _r("unsupported_image_format")),
        Case(p, "oversize image file", _by_path(41, "ok/huge.jpg"), _r("image_too_large")),
        Case(
            p,
            "corrupt PNG file",
            _by_path(42, "ok/corrupt.png"),
            _r("image_decode_error", "unsupported_image_format"),
        ),
        Case(p, "title over 512 chars", _j(valid_product(43) | {"title": "t" * 5000}), _r("string_too_long")),
        Case(
            p,
            "17 attributes",
            _j(valid_product(44) | {"attributes": {f"a{chr(97 + i)}": "v" for i in range(17)}}),
            _r("too_long"),
        ),
        Case(
            p,
            "attribute name injection",
            _j(valid_product(45) | {"attributes": {"x; DROP TABLE": "v"}}),
            _r("string_pattern_mismatch"),
        ),
        Case(
            p,
            "upsert without type",
            _j({k: v for k, v in valid_product(46).items() if k != "product_type"}),
            _r("missing"),
        ),
        Case(
            p,
            "upsert without content",
            _j({k: v for k, v in valid_product(47).items() if k != "title"}),
            _r("no_content"),
        ),
        Case(p, "op not allowed", _j(valid_product(48) | {"op": "drop"}), _r("literal_error")),
        Case(
            p,
            "NaN title literal",
            _j(valid_product(49)).replace(b'"Blue denim jacket"', b"NaN"),
            _r("invalid_json"),
        ),
    ]
    return cases


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class HostileSizes:
    """How many hypothesis examples per family (the hand-made cases always all go)."""

    per_family: int

    @classmethod
    def quick(cls) -> HostileSizes:
        return cls(per_family=140)

    @classmethod
    def full(cls) -> HostileSizes:
        return cls(per_family=300)


def corpus(product_ids: list[str], per_family: int = 80, seed_value: int = 20240501) -> list[Case]:
    """The whole corpus, in a fixed order; identical bytes on every run."""
    # each family's outcome: "dead" (a letter with a specific reason), "reported" (valid, unknown
    # products: a letter and unknown_product scores) or "accepted" (valid: scored, no letter)
    families: list[tuple[str, st.SearchStrategy[bytes], int, str]] = [
        ("random bytes", _raw_bytes(), per_family * 2, "dead"),
        ("invalid UTF-8", _bad_utf8(product_ids), per_family // 4, "dead"),
        ("wrong type", _wrong_type(product_ids), per_family, "dead"),
        ("bad impressions", _bad_impressions(product_ids), per_family, "dead"),
        ("missing fields", _missing(product_ids), per_family // 2, "dead"),
        ("unknown fields", _unknown_fields(product_ids), per_family // 2, "accepted"),
        ("bad identifiers", _bad_ids(product_ids), per_family, "dead"),
        ("huge strings", _huge_strings(product_ids), per_family // 2, "dead"),
        ("deep nesting", _deep(product_ids), per_family // 4, "dead"),
        ("too many impressions", _many_impressions(product_ids), per_family // 8, "dead"),
        ("unknown product ids", _unknown_products(), per_family // 4, "reported"),
    ]
    cases: list[Case] = []
    for i, (name, strategy, count, outcome) in enumerate(families):
        seen: set[bytes] = set()
        for value in draw(strategy, count, seed_value + i):
            if value in seen:
                continue
            seen.add(value)
            reported, accepted = outcome == "reported", outcome == "accepted"
            expect = _r("unknown_product") if reported else frozenset() if accepted else frozenset({ANY})
            cases.append(Case(QUERY, name, value, expect, reported=reported, accepted=accepted))
    return cases + hand_made(product_ids)


# --------------------------------------------------------------------------- the scenario


@dataclass
class Outcome:
    case: Case
    partition: int
    offset: int
    reason: str | None = None
    reported: bool = False
    scored: bool = False  # an accepted case: every impression scored
    problems: list[str] = field(default_factory=list)


def specific(letter: DeadLetter) -> bool:
    """A reason names what was wrong: not empty, not just the class name of an unexpected exception."""
    return bool(letter.reason) and letter.reason != letter.error_class


def scenario_hostile(stack: Stack, sizes: HostileSizes, valid_every: int = 20) -> ScenarioResult:
    """Send the corpus (with valid query logs interleaved) to a worker running both paths; every hostile
    record must come back as a dead letter with its specific reason, the valid ones scored, the worker
    healthy and the lag 0."""
    result = ScenarioResult("hostile input corpus")
    image_root = stack.log_dir / "image-root"
    prepare_image_root(image_root)
    settings = fresh_settings(stack.broker.bootstrap, stack.triton.grpc_url, image_root=image_root)
    w = WorkerProcess(settings, "both", stack.log_dir, f"hostile-{settings.worker.name}")
    with timed(result, lambda: [w]):
        embeddings = stack.embeddings(10)
        known = [e.product_id for e in embeddings]
        seed_state(settings, embeddings)
        cases = corpus(known[:3], sizes.per_family)
        controls = query_logs(known, len(cases) // valid_every + 1, 11, "hv")
        w.start()
        # probes count from when the process serves them (an orchestrator's startup probe covers the
        # seconds before); with C CRC32C the corpus is sent faster than the interpreter starts
        wait_until("the worker's health endpoint", lambda: w.healthz() is not None, 60, every_s=0.2)
        outcomes, sent_controls = _send(settings, cases, controls, valid_every)
        result.events_sent = len(cases)
        healthy: list[int | None] = [w.healthz()]
        groups = [(settings.worker.query_group, settings.topics.query_logs)]
        version = settings.worker.model_version or SERVED_VERSION
        groups.append((settings.worker.product_group_of(version), settings.topics.product_upserts))

        def drained() -> bool:
            healthy.append(w.healthz())
            return all(lag(settings, g, t) == 0 for g, t in groups)

        wait_until("lag 0 on both input topics", drained, 300, every_s=1.0)
        time.sleep(1.0)
        _match(settings, outcomes)
        controls_ok = _controls_scored(settings, sent_controls)
        by_reason: Counter[str] = Counter(o.reason for o in outcomes if o.reason)
        result.dlq_by_reason = dict(sorted(by_reason.items()))
        result.reported = sum(o.reported for o in outcomes)
        bad = [o for o in outcomes if o.problems]
        result.lost = sum(1 for o in outcomes if not (o.scored if o.case.accepted else o.reason))
        final_health = w.healthz()
        result.checks |= {
            "hostile_records": len(cases),
            "by_category": dict(Counter(c.category for c in cases)),
            "dead_lettered": sum(by_reason.values()),
            "reported_unknown_product": result.reported,
            "accepted_and_scored": f"{sum(o.scored for o in outcomes)}/{sum(c.accepted for c in cases)}",
            "mismatched": len(bad),
            "mismatch_samples": [f"{o.case.category}: {'; '.join(o.problems)}" for o in bad[:15]],
            "valid_controls_scored": f"{controls_ok}/{len(sent_controls)}",
            "healthz_during": dict(Counter(str(h) for h in healthy)),
            "healthz_after": final_health,
            "worker_alive": w.alive(),
            "worker_starts": w.starts,
        }
        result.passed = (
            not bad
            and controls_ok == len(sent_controls)
            and final_health == 200
            and all(h == 200 for h in healthy)
            and w.alive()
        )
        if not result.passed:
            result.error = f"{len(bad)} mismatched case(s), controls {controls_ok}/{len(sent_controls)}"
    return result


def _send(
    settings: Any, cases: list[Case], controls: list[Any], valid_every: int
) -> tuple[list[Outcome], list[Any]]:
    producer = make_producer(settings.kafka, max_request_size=8 * 1024 * 1024)
    topics = settings.topics
    futures = []
    sent_controls = []
    try:
        for i, case in enumerate(cases):
            topic = topics.query_logs if case.path == QUERY else topics.product_upserts
            futures.append((case, producer.send(topic, key=case.key, value=case.value)))
            if i % valid_every == 0 and controls:
                ev = controls.pop()
                producer.send(topics.query_logs, key=ev.query_id.encode(), value=encode(ev))
                sent_controls.append(ev)
        producer.flush(120)
        outcomes = []
        for case, fut in futures:
            meta = fut.get(timeout=30)
            outcomes.append(Outcome(case, meta.partition, meta.offset))
        return outcomes, sent_controls
    finally:
        producer.close(5)


def _match(settings: Any, outcomes: list[Outcome]) -> None:
    topics = settings.topics
    letters: dict[tuple[str, int, int], DeadLetter] = {}
    for _key, value in read_all(settings, topics.dead_letter):
        if value is not None:
            d = decode_event(DeadLetter, value, max_bytes=64 << 20)
            letters[(d.source_topic, d.partition, d.offset)] = d
    reports: set[str] = set()
    scored: set[bytes] = set()
    for key, copies in impression_scores(settings).items():
        record, s = copies[-1]
        if s.status == "unknown_product":
            reports.add(record.event_id)
        else:
            scored.add(key)
    for o in outcomes:
        topic = topics.query_logs if o.case.path == QUERY else topics.product_upserts
        letter = letters.get((topic, o.partition, o.offset))
        if o.case.accepted:
            _match_accepted(o, letter, scored)
            continue
        if o.case.reported:
            event_id = orjson.loads(o.case.value or b"{}").get("event_id")
            o.reported = event_id in reports
            if not o.reported:
                o.problems.append("no unknown_product report")
        if letter is None:
            o.problems.append("no dead letter")
            continue
        o.reason = letter.reason
        if not specific(letter):
            o.problems.append(f"unspecific reason {letter.reason!r} ({letter.error_message[:120]})")
        elif ANY not in o.case.expect and letter.reason not in o.case.expect:
            o.problems.append(f"reason {letter.reason!r}, expected {sorted(o.case.expect)}")
        if not letter.records(o.case.value or b""):
            o.problems.append("dead letter does not record the original bytes (head, size, digest)")


def _match_accepted(o: Outcome, letter: DeadLetter | None, scored: set[bytes]) -> None:
    """A case valid under the compatibility policy: no letter, every impression scored."""
    if letter is not None:
        o.problems.append(f"dead-lettered ({letter.reason}) though its unknown fields must be ignored")
        return
    doc = orjson.loads(o.case.value or b"{}")
    keys = [f"{doc['query_id']}:{imp['product_id']}".encode() for imp in doc["impressions"]]
    o.scored = all(k in scored for k in keys)
    if not o.scored:
        o.problems.append("accepted but not scored")


def _controls_scored(settings: Any, controls: list[Any]) -> int:
    keys = {key for key, copies in impression_scores(settings).items() if copies[-1][1].status == "scored"}
    return sum(
        all(f"{ev.query_id}:{imp.product_id}".encode() in keys for imp in ev.impressions) for ev in controls
    )
