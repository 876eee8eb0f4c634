"""Deployment checks that need no Docker engine: the compose file, the images' inputs and the docs.

- docker-compose.yml is valid against the Compose Specification JSON schema (the copy vendored in the
  `check-jsonschema` package), both as written and with every `${VAR:-default}` interpolated;
- its shape matches docs/deploying.md: pinned images, GPU reservation, ordered start, loopback ports,
  no secrets, partitions >= replicas, and only QL_* variables that worker.config.Settings reads;
- docker/create-topics.sh, run against a stub kafka-topics.sh, creates every TopicSettings topic with
  compaction on the embeddings topic;
- the worker image provides every third-party module that worker/ and schemas/ import, at any depth
  (that none is torch/querylife is tests/test_imports.py's job);
- every environment variable the worker reads is documented in docs/deploying.md (README: soft).

`python -m tests.test_deploy` prints the env-var table in Markdown, for the docs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import re
import subprocess
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from tests.import_graph import modules, third_party
from worker.config import Settings, TopicSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
DEPLOYING = ROOT / "docs" / "deploying.md"
README = ROOT / "README.md"

# Packages of the repository the worker image installs (--no-deps .); tests/test_imports.py proves
# they import no torch, querylife or harness.
FIRST_PARTY = ("worker", "schemas")


# --------------------------------------------------------------------------- settings catalogue


def settings_groups() -> list[tuple[str, type[BaseSettings]]]:
    """(field name on Settings, group class) for every `QL_<GROUP>_*` group."""
    groups = []
    for name, field in Settings.model_fields.items():
        cls = field.annotation
        assert isinstance(cls, type) and issubclass(cls, BaseSettings), f"Settings.{name} is not a group"
        groups.append((name, cls))
    return groups


def settings_env_vars() -> dict[str, tuple[str, str]]:
    """Every env var the worker reads -> (type, default), in declaration order."""
    out: dict[str, tuple[str, str]] = {}
    for _, cls in settings_groups():
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            out[f"{prefix}{field_name}".upper()] = (_type_name(field.annotation), _default_text(default))
    return out


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" (optional)" if type(None) in args else "")
    if annotation is SecretStr:
        return "secret string"
    return {Path: "path"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        return "(secret)"
    return f"`{default}`"


def env_var_table() -> str:
    """Markdown table of every variable, for docs/deploying.md and README's configuration section."""
    lines = ["| Variable | Type | Default |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {kind} | {default} |" for name, (kind, default) in settings_env_vars().items()]
    return "\n".join(lines)


def topic_fields() -> dict[str, str]:
    """TopicSettings field -> default topic name (the str fields are the topic names)."""
    return {
        name: field.default for name, field in TopicSettings.model_fields.items() if field.annotation is str
    }


# --------------------------------------------------------------------------- compose helpers

_INTERP = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation of every string value (not keys), as `docker compose config` does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _INTERP.sub(repl, value)


def interpolation_defaults(text: str) -> dict[str, str]:
    """VAR -> default for every `${VAR:-default}` in a compose file or shell script."""
    return {m.group("name"): m.group("arg") for m in _INTERP.finditer(text) if m.group("op") == ":-"}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with an empty environment."""
    return interpolate(yaml.safe_load(compose_text), {})


def compose_schema() -> dict[str, Any]:
    # check-jsonschema vendors the upstream compose-spec schema (Apache-2.0) and refreshes it per release.
    path = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def _schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


# --------------------------------------------------------------------------- compose: schema


def test_compose_matches_compose_spec_schema_as_written(compose_text: str) -> None:
    errors = _schema_errors(yaml.safe_load(compose_text))
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(errors)


def test_compose_matches_compose_spec_schema_interpolated(compose: dict[str, Any]) -> None:
    errors = _schema_errors(compose)
    assert not errors, "interpolated docker-compose.yml violates the Compose Spec:\n" + "\n".join(errors)


def test_schema_rejects_a_broken_compose_file() -> None:
    # Guards the guard: an unknown service key must fail, or the schema tests above prove nothing.
    assert _schema_errors({"services": {"x": {"image": "a", "replicaz": 2}}})


# --------------------------------------------------------------------------- compose: shape


def test_expected_services(compose: dict[str, Any]) -> None:
    expected = {"kafka", "topic-init", "triton", "product-worker", "query-worker", "prometheus"}
    assert expected <= set(compose["services"])


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    svc = compose["services"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", svc["kafka"]["image"])
    assert svc["topic-init"]["image"] == svc["kafka"]["image"], "topic-init must use the broker's tools"
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", svc["prometheus"]["image"])
    triton_base = svc["triton"]["build"]["args"]["TRITON_IMAGE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton_base)
    assert svc["triton"]["build"]["dockerfile"] == "docker/Dockerfile.triton"
    for name in ("product-worker", "query-worker"):
        assert svc[name]["build"]["dockerfile"] == "docker/Dockerfile"


def test_dockerfiles_pin_their_bases() -> None:
    worker = (DOCKER / "Dockerfile").read_text()
    triton = (DOCKER / "Dockerfile.triton").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", worker, re.M)
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3$", triton, re.M)
    assert re.search(r"^USER \d+", worker, re.M), "worker image must run as a non-root uid"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", worker, re.M), "worker HEALTHCHECK must hit /healthz"
    assert "--no-deps" in worker and "worker-requirements.txt" in worker


def test_triton_gets_a_gpu_and_a_read_only_model_repository(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    mounts = [v for v in triton["volumes"] if v.startswith("./model_repository:")]
    assert mounts and all(v.endswith(":ro") for v in mounts), "model_repository must be mounted read-only"
    assert "healthcheck" in triton


def test_start_order_uses_health_conditions(compose: dict[str, Any]) -> None:
    svc = compose["services"]
    assert svc["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("product-worker", "query-worker"):
        deps = svc[name]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["triton"]["condition"] == "service_healthy"
        assert deps["topic-init"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "triton", "prometheus"):
        assert "healthcheck" in svc[name], f"{name} needs a healthcheck for service_healthy"


def test_workers_scale_within_partitions(compose: dict[str, Any]) -> None:
    # A consumer group cannot use more consumers than partitions: extra replicas would sit idle.
    svc = compose["services"]
    partitions = int(svc["product-worker"]["environment"]["QL_TOPIC_PARTITIONS"])
    assert int(svc["topic-init"]["environment"]["QL_TOPIC_PARTITIONS"]) == partitions
    for name, path in (("product-worker", "product"), ("query-worker", "query")):
        replicas = int(svc[name]["deploy"]["replicas"])
        assert 1 <= replicas <= partitions, f"{name}: {replicas} replicas > {partitions} partitions"
        assert svc[name]["command"] == ["run", "--path", path]


def test_published_ports_bind_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"


def test_no_secret_values_in_compose(compose_text: str) -> None:
    # Secrets are passed through by name only (a key with no value); any literal would be committed.
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY|KEYFILE", re.I)
    for service in yaml.safe_load(compose_text)["services"].values():
        env = service.get("environment") or {}
        for key, value in env.items():
            if secretish.search(key):
                assert value is None, f"{key} must be passed through, not set in docker-compose.yml"


def test_compose_uses_only_known_ql_variables(compose_text: str) -> None:
    known = set(settings_env_vars())
    used = set(re.findall(r"\bQL_[A-Z0-9_]*[A-Z0-9]\b", compose_text))
    unknown = sorted(used - known)
    assert not unknown, f"docker-compose.yml uses QL_* variables that worker.config does not read: {unknown}"


def test_compose_topic_defaults_match_topic_settings(compose_text: str) -> None:
    defaults = interpolation_defaults(compose_text)
    for field, name in topic_fields().items():
        var = f"QL_TOPIC_{field.upper()}"
        assert defaults.get(var) == name, f"{var} default in docker-compose.yml != TopicSettings ({name})"


# --------------------------------------------------------------------------- topic-init script


def _run_topic_init(tmp_path: Path, env: dict[str, str] | None = None) -> list[list[str]]:
    """Run docker/create-topics.sh against a stub kafka-topics.sh; returns the --create calls' args."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "kafka-topics.sh"
    # One line per call, arguments separated by a unit separator so values may contain spaces.
    stub.write_text(f"#!/usr/bin/env bash\n(IFS=$'\\x1f'; echo \"$*\") >> {log}\n")
    stub.chmod(0o755)
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KAFKA_TOPICS": str(stub), **(env or {})}
    subprocess.run(
        ["bash", str(DOCKER / "create-topics.sh")], env=run_env, check=True, capture_output=True, timeout=30
    )
    calls = [line.split("\x1f") for line in log.read_text().splitlines()]
    return [c for c in calls if "--create" in c]


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _configs(args: list[str]) -> dict[str, str]:
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    return dict(p.split("=", 1) for p in pairs)


SERVED = json.loads((ROOT / "querylife" / "weights" / "head.json").read_text())["version"]


def test_topic_init_creates_every_topic_with_compacted_embeddings(tmp_path: Path) -> None:
    calls = {_option(c, "--topic"): c for c in _run_topic_init(tmp_path, {"QL_WORKER_MODEL_VERSION": SERVED})}
    topics = TopicSettings()
    # the embeddings topic is per model version: `<prefix>.<version>`, never the bare prefix
    names = set(topic_fields().values()) - {topics.product_embeddings} | {topics.embeddings_for(SERVED)}
    assert set(calls) == names
    embeddings = _configs(calls[topics.embeddings_for(SERVED)])
    assert embeddings["cleanup.policy"] == "compact"
    assert _configs(calls[topics.dead_letter])["cleanup.policy"] == "delete"
    for args in calls.values():
        assert "--if-not-exists" in args, "topic-init must be idempotent"
        assert _option(args, "--partitions") == str(topics.partitions)
        assert _option(args, "--replication-factor") == str(topics.replication_factor)
        assert "retention.ms" in _configs(args) or _configs(args)["cleanup.policy"] == "compact"


def test_topic_init_honours_ql_topic_overrides(tmp_path: Path) -> None:
    env = {
        "QL_TOPIC_PRODUCT_EMBEDDINGS": "prod.embeddings",
        "QL_WORKER_MODEL_VERSION": "v2",
        "QL_TOPIC_PARTITIONS": "12",
        "QL_TOPIC_REPLICATION_FACTOR": "3",
        "QL_KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
    }
    calls = {_option(c, "--topic"): c for c in _run_topic_init(tmp_path, env)}
    assert _configs(calls["prod.embeddings.v2"])["cleanup.policy"] == "compact"
    for args in calls.values():
        assert _option(args, "--partitions") == "12"
        assert _option(args, "--bootstrap-server") == "b1:9092,b2:9092"
        assert _configs(args)["min.insync.replicas"] == "2", "RF 3 should require 2 in-sync replicas"


def test_topic_init_agrees_with_worker_create_topics(tmp_path: Path) -> None:
    # `qlworker create-topics` and topic-init must give each topic the same cleanup policy and the
    # same record size limit (inputs take events up to the worker's limit; Kafka's default is 1 MiB).
    kafka_io = pytest.importorskip("worker.kafka_io")
    topics = TopicSettings()
    script = {
        _option(c, "--topic"): _configs(c)
        for c in _run_topic_init(tmp_path, {"QL_WORKER_MODEL_VERSION": SERVED})
    }
    assert set(script) == {spec.name for spec in kafka_io.topic_specs(topics, [SERVED])}
    for spec in kafka_io.topic_specs(topics, [SERVED]):
        configs = spec.topic_configs or {}
        for key, default in (("cleanup.policy", "delete"), ("max.message.bytes", None)):
            got = script[spec.name].get(key, default)
            assert got == configs.get(key, default), f"{spec.name} {key}: topic-init {got} != {configs}"
    assert script[topics.query_logs]["max.message.bytes"] == str(kafka_io.MAX_INPUT_RECORD_BYTES)


def test_compose_serves_the_committed_heads_version(compose: dict[str, Any]) -> None:
    env = compose["services"]["query-worker"]["environment"]
    assert env["QL_WORKER_MODEL_VERSION"] == SERVED  # the fixture reads compose with its defaults
    assert (
        compose["services"]["topic-init"]["environment"]["QL_WORKER_MODEL_VERSION"]
        == env["QL_WORKER_MODEL_VERSION"]
    )
    command = compose["services"]["triton"]["command"]
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command


def test_compose_runs_the_topic_init_script(compose: dict[str, Any]) -> None:
    init = compose["services"]["topic-init"]
    assert any(v.startswith("./docker/create-topics.sh:") for v in init["volumes"])
    assert init["entrypoint"][-1] == "/opt/querylife/create-topics.sh"


# --------------------------------------------------------------------------- worker image deps


def _requirement_names(path: Path) -> dict[str, set[str]]:
    """Canonical distribution name -> requested extras, from a pip requirements file."""
    out: dict[str, set[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"([A-Za-z0-9._-]+)(?:\[([^\]]*)\])?", line)
        assert m, f"unparsable requirement {raw!r}"
        out[_canon(m.group(1))] = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    return out


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: dict[str, set[str]]) -> set[str]:
    """Installed distributions reachable from roots (markers evaluated for the requested extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots.items())
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((_canon(req.name), set(req.extras)))
    return seen


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it (at any depth: function-level imports run too), for the
    code the worker image carries."""
    found: dict[str, set[str]] = {}
    for path in modules(FIRST_PARTY).values():
        for top in third_party(path):
            found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_worker_image_provides_every_worker_import() -> None:
    available = _closure(_requirement_names(DOCKER / "worker-requirements.txt"))
    dists = importlib.metadata.packages_distributions()
    problems = []
    for module, where in sorted(_third_party_imports().items()):
        owners = {_canon(d) for d in dists.get(module, [])}
        if not owners & available:
            problems.append(
                f"{module} from {sorted(owners) or 'an uninstalled package'} "
                f"(imported by {sorted(where)}) is missing from docker/worker-requirements.txt"
            )
    assert not problems, "\n".join(problems)


def _requirement_specs(lines: list[str]) -> dict[str, str]:
    """Canonical distribution name -> its requirement as packaging normalises it (extras, pins)."""
    from packaging.requirements import Requirement

    specs = [Requirement(line.split("#", 1)[0].strip()) for line in lines]
    return {_canon(r.name): str(r).replace(r.name, _canon(r.name), 1) for r in specs if r.name}


def test_worker_extra_is_the_worker_image_requirements() -> None:
    """`pip install querylife[worker]` and the image install the same packages at the same pins."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    image = [
        line
        for line in (DOCKER / "worker-requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert _requirement_specs(extra) == _requirement_specs(image)
    assert {"kafka-python", "crc32c", "tritonclient"} <= set(_requirement_specs(image))


# --------------------------------------------------------------------------- docs


def _undocumented(path: Path) -> list[str]:
    text = path.read_text()
    return [name for name in settings_env_vars() if f"`{name}`" not in text]


def test_deploying_guide_documents_every_env_var() -> None:
    missing = _undocumented(DEPLOYING)
    assert not missing, (
        f"{DEPLOYING.relative_to(ROOT)} does not mention (in backticks) these variables: {missing}\n"
        "Regenerate the table with `python -m tests.test_deploy`."
    )


def test_readme_documents_every_env_var() -> None:
    # README's configuration table is maintained by hand (with a meaning per row): a new setting needs
    # its row; `python -m tests.test_deploy` prints every row's type and default.
    missing = _undocumented(README)
    assert not missing, f"README.md configuration table lacks: {missing}"


def test_env_var_table_lists_every_group() -> None:
    table = env_var_table()
    for prefix in ("QL_KAFKA_", "QL_TOPIC_", "QL_TRITON_", "QL_WORKER_"):
        assert f"`{prefix}" in table
    assert "`QL_KAFKA_SASL_PLAIN_PASSWORD` | secret string (optional) | unset |" in table


if __name__ == "__main__":
    print(env_var_table())


def test_kafka_python_checksums_in_c() -> None:
    """kafka-python falls back to pure-Python CRC32C silently when `crc32c` is missing: state loads
    ran ~12x slower (docs/performance.md). The package is declared in both requirement lists."""
    from kafka.record import util

    assert util.crc32c_c is not None, "the crc32c package is not installed: kafka-python checksums in Python"
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
    for spec in (ROOT / "pyproject.toml", ROOT / "docker" / "worker-requirements.txt"):
        assert "crc32c==" in spec.read_text(), f"crc32c is not declared in {spec.name}"
