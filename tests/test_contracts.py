"""Contracts v2 (docs/contracts.md): v1 records still decode, v2 records round-trip through a real
topic and validate under their exported JSON Schemas, and unknown input fields are accepted."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from pydantic import BaseModel

from schemas import (
    ABMetrics,
    ABMetricsV2,
    DeadLetter,
    EventError,
    Experiment,
    FusionWeights,
    ImpressionScore,
    ProductEmbedding,
    ProductEmbeddingV2,
    ProductScore,
    ProductUpsert,
    QueryLog,
    QueryScores,
    RelevanceEntry,
    RelevanceScore,
    ScoreReply,
    ScoreRequest,
    ShadowPair,
    ShadowScores,
    decode_event,
    decode_product_embedding,
    encode,
    normalise_query,
    table_key,
)
from schemas.export import OUT_DIR, RECORDS
from tests.conftest import make_settings
from worker.config import TopicSettings
from worker.kafka_io import create_topics, make_producer, read_topic, topic_specs

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
VERSION = "querylife-v1-5e4a6295a6"
WEIGHTS = FusionWeights(title=0.7, image=0.3)

# Records exactly as workers before contracts v2 wrote them: they stay on topics (compacted state,
# A/B partials, dead letters) and must decode where docs/contracts.md says they are still read.
V1_GOLDEN: list[tuple[type[BaseModel], bytes]] = [
    (
        ProductEmbedding,
        b'{"schema_version":1,"product_id":"10001","product_type":"Tshirts","embedding":[0.6,0.8],'
        b'"has_title":true,"has_image":false,"model_version":"v1","source_event_id":"e-1",'
        b'"updated_at":"2026-11-24T12:00:00Z"}',
    ),
    (
        RelevanceScore,
        b'{"schema_version":1,"query_id":"qid-1","event_id":"q-1","product_id":"404","variant":"A",'
        b'"position":2,"status":"unknown_product","score":null,"similarity":null,"label":null,'
        b'"model_version":"v1","scored_at":"2026-11-24T12:00:00Z"}',
    ),
    (
        ABMetrics,
        b'{"schema_version":1,"variant":"B","window_start":"2026-11-24T12:00:00Z",'
        b'"window_end":"2026-11-24T12:00:00Z","source_partition":0,"last_offset":41,"queries":10,'
        b'"queries_with_order":2,"impressions":100,"clicks":12,"orders":2,"scored_impressions":100,'
        b'"scored_clicks":12,"scored_top3":30,"relevance_sum_shown":55.0,"relevance_sum_clicked":9.0,'
        b'"relevance_sum_top3":20.0,"mean_relevance_shown":0.55,"mean_relevance_clicked":0.75,'
        b'"mean_relevance_top3":0.667,"ctr":0.12,"ctr_ci":{"low":0.07,"high":0.2},'
        b'"conversion_rate":0.2,"conversion_ci":{"low":0.06,"high":0.51},"model_version":"v1",'
        b'"emitted_at":"2026-11-24T12:00:00Z"}',
    ),
    (
        DeadLetter,
        b'{"schema_version":1,"source_topic":"in","partition":2,"offset":7,"key":"aw==",'
        b'"key_truncated":false,"original":"/wBub3QganNvbg==","reason":"invalid_json",'
        b'"error_class":"EventError","error_message":"bad","event_id":null,'
        b'"failed_at":"2026-11-24T12:00:00Z","worker":"w"}',
    ),
]

QUERY_LOG = {
    "schema_version": 1,
    "event_id": "q-1",
    "event_time": "2026-12-03T09:00:00Z",
    "query_id": "qid-1",
    "query": "Black  Tshirt MEN",
    "user_id": "u-7",
    "variant": "B",
    "impressions": [{"product_id": "10001", "position": 1, "clicked": True}],
}


def embedding_v2(dtype: str = "float32") -> ProductEmbeddingV2:
    vector = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    return ProductEmbeddingV2.from_array(
        vector / np.linalg.norm(vector),
        dtype=dtype,  # type: ignore[arg-type]
        product_id="10001",
        product_type="Tshirts",
        model_version=VERSION,
        fusion_weights=WEIGHTS,
        has_title=True,
        has_image=True,
        source_event_id="e-1",
        updated_at=NOW,
    )


def impression(pid: str, position: int, score: float | None) -> ImpressionScore:
    if score is None:
        return ImpressionScore(product_id=pid, position=position, status="unknown_product")
    return ImpressionScore(
        product_id=pid,
        position=position,
        score=score,
        similarity=0.4,
        label="exact",  # type: ignore[arg-type]
        fusion_weights=WEIGHTS,
        clicked=position == 1,
    )


V2_EXAMPLES: list[BaseModel] = [
    embedding_v2("float32"),
    embedding_v2("float16"),
    QueryScores(
        query_id="qid-1",
        event_id="q-1",
        event_time=NOW,
        query="Black  Tshirt MEN",
        normalised_query=normalise_query("Black  Tshirt MEN"),
        experiment_id="exp-ranker-1",
        variant="B",
        user_id="u-7",
        query_model_version=VERSION,
        embedding_model_version=VERSION,
        impressions=[impression("10001", 1, 0.93), impression("404", 2, None)],
        scored_at=NOW,
    ),
    RelevanceEntry(
        model_version=VERSION,
        query="black tshirt men",
        product_id="10001",
        score=0.93,
        similarity=0.41,
        label="exact",  # type: ignore[arg-type]
        fusion_weights=WEIGHTS,
        source="top_k",
        rank=1,
        scored_at=NOW,
    ),
    ScoreRequest(
        request_id="r-1",
        reply_key="ranker-3",
        query="black tshirt",
        candidates=["10001", "404"],
        sent_at=NOW,
    ),
    ScoreReply(
        request_id="r-1",
        reply_key="ranker-3",
        status="ok",
        model_version=VERSION,
        scores=[
            ProductScore(product_id="10001", score=0.9, similarity=0.4, label="exact"),  # type: ignore[arg-type]
            ProductScore(product_id="404", status="unknown_product"),
        ],
        replied_at=NOW,
    ),
    ABMetricsV2(
        experiment_id="exp-ranker-1",
        unit="user",
        unit_id="u-7",
        variant="B",
        model_version=VERSION,
        window_start=NOW,
        window_end=NOW,
        source_partition=2,
        last_offset=17,
        searches=3,
        searches_with_order=1,
        impressions=30,
        clicks=4,
        orders=1,
        scored_impressions=29,
        scored_clicks=4,
        scored_top3=9,
        relevance_sum_shown=12.5,
        relevance_sum_clicked=3.1,
        relevance_sum_top3=6.0,
        emitted_at=NOW,
    ),
    Experiment(
        experiment_id="exp-ranker-1",
        unit="user",
        split={"A": 0.5, "B": 0.5},
        control="A",
        start=NOW,
    ),
    ShadowScores(
        query_id="qid-1",
        event_id="q-1",
        serving_version=VERSION,
        candidate_version="querylife-v1-0123456789",
        pairs=[
            ShadowPair(
                product_id="10001",
                product_type="Tshirts",
                position=1,
                serving_score=0.9,
                candidate_score=0.8,
                serving_label="exact",  # type: ignore[arg-type]
                candidate_label="relevant",  # type: ignore[arg-type]
            )
        ],
        compared_at=NOW,
    ),
]


def _schema_file(model: type[BaseModel]) -> dict[str, Any]:
    [(name, version)] = [key for key, m in RECORDS.items() if m is model]
    schema: dict[str, Any] = orjson.loads((OUT_DIR / f"{name}.v{version}.schema.json").read_bytes())
    return schema


@pytest.mark.parametrize(("model", "raw"), V1_GOLDEN, ids=lambda v: getattr(v, "__name__", ""))
def test_v1_records_still_decode(model: type[BaseModel], raw: bytes) -> None:
    record = decode_event(model, raw)
    assert encode(record) == raw or orjson.loads(encode(record)).items() >= orjson.loads(raw).items()


def test_v1_and_v2_embeddings_decode_side_by_side() -> None:
    v1 = decode_product_embedding(V1_GOLDEN[0][1])
    v2 = decode_product_embedding(encode(embedding_v2()))
    assert isinstance(v1, ProductEmbedding) and v1.embedding == [0.6, 0.8]
    assert isinstance(v2, ProductEmbeddingV2)
    np.testing.assert_array_equal(v2.array(), embedding_v2().array())
    with pytest.raises(EventError) as info:
        decode_product_embedding(encode(embedding_v2())[:-1] + b',"schema_version":3}')
    assert info.value.reason == "unsupported_schema_version"


def test_v2_embedding_is_a_fraction_of_v1() -> None:
    vector = embedding_v2().array()
    v1 = ProductEmbedding(
        product_id="10001",
        product_type="Tshirts",
        embedding=[float(x) for x in vector],
        has_title=True,
        has_image=True,
        model_version=VERSION,
        source_event_id="e-1",
        updated_at=NOW,
    )
    sizes = {
        name: len(encode(r))
        for name, r in [("v1", v1), ("f32", embedding_v2()), ("f16", embedding_v2("float16"))]
    }
    assert sizes["f32"] < sizes["v1"] / 2.5, sizes
    assert sizes["f16"] < sizes["f32"] * 0.6, sizes
    half = embedding_v2("float16").array().astype(np.float32)
    assert np.abs(half - vector).max() < 1e-3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dim": 255}, "vector_size"),
        (
            {"vector": base64.b64encode(np.full(256, np.nan, dtype=np.float32).tobytes()).decode()},
            "finite_number",
        ),
        ({"dtype": "float64"}, "literal_error"),
        ({"fusion_weights": {"title": 0.9, "image": 0.9}}, "weights_sum"),
        ({"model_version": "v1:../x"}, "string_pattern_mismatch"),
    ],
)
def test_bad_v2_embeddings_are_refused(change: dict[str, Any], reason: str) -> None:
    doc = orjson.loads(encode(embedding_v2())) | change
    with pytest.raises(EventError) as info:
        decode_event(ProductEmbeddingV2, orjson.dumps(doc))
    assert info.value.reason == reason


def test_every_v2_record_round_trips_through_a_real_topic(broker) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(broker)
    create_topics(settings)
    producer = make_producer(settings.kafka)
    topic = settings.topics.dead_letter
    for i, record in enumerate(V2_EXAMPLES):
        producer.send(topic, key=str(i).encode(), value=encode(record)).get(timeout=10)
    producer.close()
    received = {int(k or b"-1"): v for k, v in read_topic(settings, topic)}
    assert sorted(received) == list(range(len(V2_EXAMPLES)))
    for i, record in enumerate(V2_EXAMPLES):
        assert decode_event(type(record), received[i]) == record


@pytest.mark.parametrize("record", V2_EXAMPLES, ids=lambda r: type(r).__name__)
def test_exported_json_schemas_validate_v2_records(record: BaseModel) -> None:
    schema = _schema_file(type(record))
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(orjson.loads(encode(record)))
    broken = orjson.loads(encode(record))
    broken[next(iter(broken))] = [[]]  # the first field (schema_version or an id) as a nested list
    assert list(validator.iter_errors(broken)), "the schema accepts a wrong type: it checks nothing"


def test_inputs_accept_unknown_fields_and_list_them() -> None:
    doc = QUERY_LOG | {"ab_bucket": 3, "__proto__": {"admin": True}}
    doc["impressions"] = [{"product_id": "10001", "position": 1, "dwell_ms": 1200}]
    event = decode_event(QueryLog, orjson.dumps(doc))
    assert event.query_id == "qid-1" and event.impressions[0].position == 1
    assert sorted(event.unknown_fields()) == ["__proto__", "ab_bucket", "impressions.0.dwell_ms"]
    upsert = decode_event(
        ProductUpsert,
        orjson.dumps(
            {
                "event_id": "e-1",
                "event_time": "2026-12-03T09:00:00Z",
                "product_id": "10001",
                "title": "Nike Men Black Tshirt",
                "product_type": "Tshirts",
                "image": {"path": "10001.jpg", "alt": "front"},
                "brand_id": 77,
            }
        ),
    )
    assert sorted(upsert.unknown_fields()) == ["brand_id", "image.alt"]
    assert decode_event(QueryLog, orjson.dumps(QUERY_LOG)).unknown_fields() == []


def test_experiment_id_is_optional_and_logs_are_keyed_by_unit() -> None:
    event = decode_event(QueryLog, orjson.dumps(QUERY_LOG | {"experiment_id": "exp-1"}))
    assert event.experiment_id == "exp-1"
    assert event.unit_key() == b"u-7"
    anonymous = QUERY_LOG | {"user_id": None, "session_id": "s-1"}
    assert decode_event(QueryLog, orjson.dumps(anonymous)).unit_key() == b"s-1"
    assert decode_event(QueryLog, orjson.dumps(anonymous | {"session_id": None})).unit_key() == b"qid-1"


def test_a_newer_schema_version_is_refused_by_name() -> None:
    with pytest.raises(EventError) as info:
        decode_event(QueryLog, orjson.dumps(QUERY_LOG | {"schema_version": 2}))
    assert (info.value.reason, info.value.field) == ("unsupported_schema_version", "schema_version")


def test_scores_never_mix_model_versions() -> None:
    doc = orjson.loads(encode(V2_EXAMPLES[2])) | {"embedding_model_version": "querylife-v1-0123456789"}
    with pytest.raises(EventError) as info:
        decode_event(QueryScores, orjson.dumps(doc))
    assert info.value.reason == "mixed_model_versions"


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Black  Tshirt\tMEN ", "black tshirt men"),
        ("\u00a0red\u3000dress\n", "red dress"),  # NBSP, ideographic space, newline
        ("ＮＩＫＥ shoes", "nike shoes"),  # full-width letters
        ("Straße", "strasse"),
        ("café", "café"),
        ("cafe\u0301", "café"),  # combining accent composes
    ],
)
def test_query_normalisation(raw: str, normalised: str) -> None:
    assert normalise_query(raw) == normalised
    assert normalise_query(normalised) == normalised


def test_relevance_table_keys_are_unambiguous() -> None:
    entry = V2_EXAMPLES[3]
    assert isinstance(entry, RelevanceEntry)
    assert entry.key() == table_key(VERSION, "black tshirt men", "10001")
    assert orjson.loads(entry.key()) == [VERSION, "black tshirt men", "10001"]
    assert table_key("v", "a:b", "c") != table_key("v", "a", "b:c")
    with pytest.raises(EventError) as info:
        decode_event(RelevanceEntry, encode(entry)[:-1] + b',"query":"Black Tshirt"}')
    assert info.value.reason == "query_not_normalised"


CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"


def _rows() -> dict[str, str]:
    """docs/contracts.md topic table: topic name -> its whole row."""
    rows = {}
    for line in CONTRACTS.read_text().splitlines():
        if line.startswith("| `querylife."):
            rows[line.split("`")[1]] = line
    return rows


def test_contracts_doc_names_every_record_version() -> None:
    text = CONTRACTS.read_text()
    for (_name, version), model in RECORDS.items():
        shown = model.__name__.removesuffix(f"V{version}")
        assert f"`{shown}` v{version}" in text, f"docs/contracts.md does not mention {shown} v{version}"


def test_contracts_doc_agrees_with_the_topics_created() -> None:
    rows = _rows()
    for spec in topic_specs(TopicSettings()):
        assert spec.name in rows, f"{spec.name} missing from docs/contracts.md"
        cleanup = (spec.topic_configs or {}).get("cleanup.policy", "delete")
        cell = rows[spec.name].split("|")[5].replace("*", "").strip()
        assert cell.split(" ")[0].rstrip(",") == cleanup, (spec.name, cleanup, cell)
