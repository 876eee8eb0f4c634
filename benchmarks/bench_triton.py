"""Triton vs in-process Query-LIFE: throughput and p50/p99 latency of the text and image paths.

- text path: ``query_relevance`` (QUERY + PRODUCT_EMBEDDING -> SIMILARITY/SCORE/LABEL); in process:
  ``encode_texts`` + ``relevance`` + ``label``. Every query in a batch is distinct (no dedupe gain).
- image path: ``product_embedding`` (TITLE + PRODUCT_TYPE + IMAGE -> EMBEDDING/ERROR) on catalogue
  JPEGs; in process: ``decode_image`` + ``preprocess`` + ``encode_images`` + ``encode_texts`` + ``fuse``.

One synchronous caller, batches of 1 and 32, both sides on the same CPU threads (run one after the
other, never concurrently). The Triton figures include the client (serialisation, loopback gRPC) and
the python-backend hops of the ensemble. Starts its own Triton on an exported copy of
model_repository/ unless ``--url`` points at a running one.

    python benchmarks/bench_triton.py [--quick] [--url 127.0.0.1:8001] [--json reports/bench/triton.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from querylife.catalogue import catalogue_dir

REPO = Path(__file__).resolve().parents[1]
DATA = catalogue_dir()  # the full catalogue (flag-free: $QUERYLIFE_DATA or ../shared)


@dataclass
class Result:
    path: str
    batch: int
    backend: str
    calls: int
    items_per_s: float
    p50_ms: float
    p99_ms: float


def measure(fn: Callable[[int], object], calls: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(calls):
        t = time.perf_counter()
        fn(warmup + i)
        out.append(time.perf_counter() - t)
    return out


def summarise(path: str, batch: int, backend: str, lat: list[float]) -> Result:
    q = np.percentile(np.asarray(lat) * 1000, [50, 99])
    return Result(path, batch, backend, len(lat), batch * len(lat) / sum(lat), float(q[0]), float(q[1]))


def load_catalogue(n: int) -> list[tuple[str, str, bytes]]:
    rows = []
    with open(DATA / "products.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            img = DATA / "images" / str(r.get("image_path") or "")
            if r.get("image_path") and img.is_file():
                rows.append((r["title"], r["product_type"], img.read_bytes()))
            if len(rows) == n:
                break
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few calls (a smoke run, ~1-2 min)")
    ap.add_argument("--url", default=None, help="gRPC address of a running Triton (default: start one)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in process (as the CPU configs)")
    ap.add_argument(
        "--triton-threads", type=int, default=None, help="override num_threads in the exported configs"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))

    import torch

    from harness.local_services import LocalTriton, prepare_model_repository
    from querylife.imaging import decode_image, preprocess
    from querylife.model import load_model
    from worker.config import TritonSettings
    from worker.triton_client import RelevanceClient

    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    calls = {1: 15, 32: 4} if a.quick else {1: 100, 32: 20}
    catalogue = load_catalogue(max(batches) * 2)

    triton: LocalTriton | None = None
    if a.url is None:
        repo = prepare_model_repository(Path(tempfile.mkdtemp(prefix="bench-triton-")) / "model_repository")
        if a.triton_threads is not None:
            for cfg in repo.glob("*/config.pbtxt"):
                cfg.write_text(
                    re.sub(
                        r'(key: "num_threads"\s*value: \{ string_value: ")\d+',
                        rf"\g<1>{a.triton_threads}",
                        cfg.read_text(),
                    )
                )
        t0 = time.perf_counter()
        triton = LocalTriton(repo).start()
        print(f"triton ready in {time.perf_counter() - t0:.1f} s ({triton.grpc_url})", flush=True)
    client = RelevanceClient(TritonSettings(url=a.url or (triton.grpc_url if triton else ""), max_batch=64))
    model = load_model()
    results: list[Result] = []
    try:
        client.wait_ready(120)
        dim = model.embed_dim
        rng = np.random.default_rng(0)
        product_emb = rng.standard_normal((max(batches), dim)).astype(np.float32)
        product_emb /= np.linalg.norm(product_emb, axis=1, keepdims=True)

        for b in batches:
            n_calls = calls.get(b, 10)
            warm = 2 if b > 1 else 5

            def queries(i: int, b: int = b) -> list[str]:
                return [f"{catalogue[(i * b + j) % len(catalogue)][0].lower()} #{i}-{j}" for j in range(b)]

            def text_triton(i: int, b: int = b) -> object:
                return client.query_relevance(queries(i), product_emb[:b])

            def text_local(i: int, b: int = b) -> object:
                q = model.encode_texts(queries(i))
                _, prob = model.relevance(q, torch.from_numpy(product_emb[:b]))
                return [model.label(float(p)) for p in prob]

            def items(i: int, b: int = b) -> list[tuple[str, str, bytes]]:
                return [catalogue[(i * b + j) % len(catalogue)] for j in range(b)]

            def image_triton(i: int, b: int = b) -> object:
                rows = items(i)
                return client.product_embeddings(
                    [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
                )

            def image_local(i: int, b: int = b) -> object:
                rows = items(i)
                pixels = preprocess([decode_image(r[2]) for r in rows], model.image_size)
                ones = torch.ones(len(rows), dtype=torch.bool)
                return model.fuse(
                    model.encode_texts([r[0] for r in rows]),
                    model.encode_images(pixels),
                    [r[1] for r in rows],
                    ones,
                    ones,
                )

            for path, tri, loc in (("text", text_triton, text_local), ("image", image_triton, image_local)):
                for backend, fn in (("triton", tri), ("in-process", loc)):
                    lat = measure(fn, n_calls, warm)
                    res = summarise(path, b, backend, lat)
                    results.append(res)
                    print(
                        f"  {path:<5} batch {b:>3} {backend:<10} {res.items_per_s:8.1f} items/s  "
                        f"p50 {res.p50_ms:8.2f} ms  p99 {res.p99_ms:8.2f} ms  ({n_calls} calls)",
                        flush=True,
                    )
    finally:
        client.close()
        if triton is not None:
            triton.stop()

    print("\npath   batch  triton items/s  in-proc items/s  throughput ratio  p50 triton/in-proc (ms)")
    by_key = {(r.path, r.batch, r.backend): r for r in results}
    for path in ("text", "image"):
        for b in batches:
            tr, ip = by_key[(path, b, "triton")], by_key[(path, b, "in-process")]
            print(
                f"{path:<6} {b:>5} {tr.items_per_s:15.1f} {ip.items_per_s:16.1f} "
                f"{tr.items_per_s / ip.items_per_s:17.2f}  {tr.p50_ms:8.2f} / {ip.p50_ms:.2f}"
            )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "quick": a.quick,
            "threads": a.threads,
            "triton_threads": a.triton_threads,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        }
        a.json.write_text(
            json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
