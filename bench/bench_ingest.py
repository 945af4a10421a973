"""Benchmark of the index: ingest throughput, per-paper retrieval latency at 1k vs 1M chunks, API memory.

    .venv/bin/python bench/bench_ingest.py                      # everything, default sizes
    .venv/bin/python bench/bench_ingest.py --papers 40          # (a) on the first 40 papers of the corpus
    .venv/bin/python bench/bench_ingest.py --skip-ingest --large 1000000

(a) parse + chunk + embed + store of the JATS corpus in ../shared/data/jats, against a bare `model.encode` of
    the same chunk texts in the same run (target: pipeline <= 1.10x encode alone).
(b) per-paper retrieval (`Store.get_vectors` + exact dot product, and `Retriever.retrieve(mode="dense")` with
    a fixed query vector so that only retrieval is timed) p50/p99 with a 1k-chunk and a 1M-chunk library of
    synthetic random vectors (target: 1M/1k <= 1.2).
(c) RSS of a fresh reader process (the API's view) that opens each store and answers per-paper queries; and
    the RSS the API's query encoder adds to a fresh process, per embedding backend (--encoder-backends).

Not a test: it prints a rich table. Stores live in a temporary directory unless --work-dir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.core.ids import own_paper_id  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.index.embedding import Embedder  # noqa: E402
from pmcqa.index.store import Store, content_hash  # noqa: E402
from pmcqa.ingest.chunking import Chunker  # noqa: E402
from pmcqa.ingest.jats import parse_jats  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "jats"
CHUNKS_PER_PAPER = 50
console = Console(width=130)


# --- (a) ingest throughput ---------------------------------------------------------------------------------


def corpus_files(limit: int | None) -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".xml", ".nxml") and p.is_file())
    return files[:limit] if limit else files


def parse_and_chunk(files: list[Path], settings: Settings) -> list[tuple[Any, list[Any]]]:
    """(record, chunks) per paper; files that are not JATS (the corpus holds one PubMed XML) are skipped."""
    chunker = Chunker(settings)
    out = []
    for path in files:
        try:
            papers = parse_jats(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
            console.print(f"[yellow]skip {path.name}: {exc}")
            continue
        for paper in papers:
            paper_id = own_paper_id(paper.pmcid, paper.doi)  # the id `pmcqa ingest --xml` stores it under
            if paper_id is None:
                console.print(f"[yellow]skip a paper of {path.name}: no PMCID or DOI")
                continue
            out.append(chunker.chunk(paper, paper_id, str(path)))
    return out


def bench_ingest(args: argparse.Namespace, work: Path) -> dict[str, float]:
    # bench_encode.py runs this with the backend it chose; the default is the settings' own.
    backend = getattr(args, "embedding_backend", None)
    settings = Settings(data_dir=work / "ingest-warm", **({"embedding_backend": backend} if backend else {}))
    embedder = Embedder(settings)
    files = corpus_files(args.papers)
    parse_and_chunk(files, settings)  # warm-up: tokenizer, lxml
    started = time.perf_counter()
    papers = parse_and_chunk(files, settings)
    result: dict[str, float] = {"parse_chunk_s": time.perf_counter() - started}
    texts = [c.text for _, chunks in papers for c in chunks]
    result.update(files=len(files), papers=len(papers), chunks=len(texts))
    result["store_s"] = time_store_writes(papers, embedder.dimension, work / "ingest-store-only")
    if args.skip_encode:
        return result
    embedder.embed_documents(texts[:64])  # warm-up: first batches pay one-off allocation costs

    best_encode, best_pipeline = float("inf"), float("inf")
    for repeat in range(args.repeats):
        started = time.perf_counter()
        embedder.document_model.encode(
            texts, batch_size=settings.embedding_batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        best_encode = min(best_encode, time.perf_counter() - started)

        store_settings = Settings(data_dir=work / f"ingest-{repeat}")
        shutil.rmtree(store_settings.data_dir, ignore_errors=True)  # a reused store would skip embedding
        started = time.perf_counter()
        store = Store(store_settings)
        batch: list[tuple[Any, list[Any], None]] = []
        for record, chunks in parse_and_chunk(files, store_settings):
            batch.append((record, chunks, None))
            if len(batch) == args.ingest_batch:
                store.put_papers(batch, embedder)
                batch = []
        store.put_papers(batch, embedder)
        store.close()  # includes bringing the FAISS file up to date
        best_pipeline = min(best_pipeline, time.perf_counter() - started)
    result.update(encode_s=best_encode, pipeline_s=best_pipeline, ratio=best_pipeline / best_encode)
    return result


def time_store_writes(papers: list[tuple[Any, list[Any]]], dimension: int, directory: Path) -> float:
    """The store's own share of ingest: put_papers (+ FAISS build) with precomputed (random) vectors."""
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)
    items = [(r, c, rng.standard_normal((len(c), dimension)).astype(np.float32)) for r, c in papers]
    started = time.perf_counter()
    store = Store(Settings(data_dir=directory))
    model = _BulkModel(dimension)
    for first in range(0, len(items), 8):
        store.put_papers(items[first : first + 8], model)  # type: ignore[arg-type]
    store.close()
    return time.perf_counter() - started


# --- (b) per-paper retrieval latency ------------------------------------------------------------------------


class _FixedQuery:
    """Stands in for the query encoder so the timing covers retrieval only (encoding does not scale)."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return np.tile(self.vector, (len(texts), 1))


class _BulkModel:
    model_name, document_prefix = "bench-random", ""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension


def build_synthetic(directory: Path, n_chunks: int, dimension: int, seed: int = 0) -> Settings:
    """A library of `n_chunks` random unit vectors, 50 chunks per paper, loaded with bulk SQL inserts."""
    settings = Settings(data_dir=directory)
    store = Store(settings)
    rng = np.random.default_rng(seed)
    conn = store._conn()  # bulk path: same schema as put_paper, without per-chunk pydantic objects
    conn.execute("BEGIN IMMEDIATE")
    store._record_model(conn, _BulkModel(dimension))  # type: ignore[arg-type]  # what put_papers records
    conn.execute("COMMIT")
    n_papers = n_chunks // CHUNKS_PER_PAPER
    body = " ".join(
        ["the cells were treated with the compound and viability was measured after two days"] * 3
    )
    for first in range(0, n_papers, 2000):
        papers = range(first, min(first + 2000, n_papers))
        vectors = rng.standard_normal((len(papers) * CHUNKS_PER_PAPER, dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        paper_rows, chunk_rows = [], []
        for k, p in enumerate(papers):
            paper_id = f"PMC{10_000_000 + p}"
            text = "\n\n".join(f"{i} {body}" for i in range(CHUNKS_PER_PAPER))
            record = {"paper_id": paper_id, "title": f"Synthetic {p}", "text": text}
            paper_rows.append((paper_id, "ingested", CHUNKS_PER_PAPER, "bench-random", json.dumps(record)))
            offset = 0
            for i in range(CHUNKS_PER_PAPER):
                chunk_text = f"{i} {body}"
                chunk = {
                    "chunk_id": f"{paper_id}-{i}",
                    "paper_id": paper_id,
                    "ordinal": i,
                    "section_path": ["Results"],
                    "kind": "paragraph",
                    "text": chunk_text,
                    "start": offset,
                    "end": offset + len(chunk_text),
                }
                offset += len(chunk_text) + 2
                digest = content_hash("bench-random", "", f"{paper_id}-{i}")
                vector = vectors[k * CHUNKS_PER_PAPER + i].tobytes()
                chunk_rows.append((paper_id, i, f"{paper_id}-{i}", digest, json.dumps(chunk), vector))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO papers(paper_id, status, n_chunks, embedding_model, record_json, created_at,"
            " updated_at) VALUES (?,?,?,?,?,0,0)",
            paper_rows,
        )
        conn.executemany(
            "INSERT INTO chunks(paper_id, ordinal, chunk_id, content_hash, chunk_json, vector)"
            " VALUES (?,?,?,?,?,?)",
            chunk_rows,
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return settings


READER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

def rss_mb():
    return status_mb("VmRSS")

from pmcqa.index.store import Store
from pmcqa.core.settings import Settings
try:
    from pmcqa.index.retrieval import Retriever
except ImportError:
    Retriever = None
baseline = rss_mb()
anon_baseline = status_mb("RssAnon")
store = Store(Settings(data_dir=sys.argv[1]))  # the API's reader: no embedding model needed
dim = store.embedding_info().dimension
rng = np.random.default_rng(1)
ids = store.paper_ids()
queries = int(sys.argv[2])
picks = [ids[i] for i in rng.integers(0, len(ids), queries)]
q = rng.standard_normal(dim).astype(np.float32); q /= np.linalg.norm(q)

def per_paper(pid):
    chunk_ids, matrix = store.get_vectors(pid)
    scores = matrix @ q
    top = np.argpartition(-scores, 8)[:8]
    return [chunk_ids[i] for i in top[np.argsort(-scores[top])]]

for pid in picks[:20]:
    per_paper(pid)  # warm the statement cache
lat = []
for pid in picks:
    t = time.perf_counter(); per_paper(pid); lat.append(time.perf_counter() - t)
out = {"store_ms": lat, "rss_after_mb": rss_mb(), "rss_base_mb": baseline}
if Retriever is not None:
    class Fixed:
        def embed_queries(self, texts):
            return np.tile(q, (len(texts), 1))
    settings = Settings(data_dir=sys.argv[1])
    retriever = Retriever(store, Fixed(), settings)
    for pid in picks[:20]:
        retriever.retrieve(pid, "which compound was used?", mode="dense")
    rlat = []
    for pid in picks:
        t = time.perf_counter(); retriever.retrieve(pid, "which compound was used?", mode="dense")
        rlat.append(time.perf_counter() - t)
    out["retrieve_ms"] = rlat
    out["rss_after_retrieve_mb"] = rss_mb()
out["anon_delta_mb"] = status_mb("RssAnon") - anon_baseline
out["file_rss_mb"] = status_mb("RssFile")
out["hwm_mb"] = status_mb("VmHWM")
print(json.dumps(out))
"""


def measure_reader(settings: Settings, queries: int) -> dict[str, Any]:
    """Latency and RSS in a fresh process, as the API would see the store."""
    result = subprocess.run(
        [sys.executable, "-c", READER, str(settings.data_dir), str(queries), str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


ENCODER = r"""
import json, sys
sys.path.insert(0, sys.argv[3])

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
baseline, anon_baseline = status_mb("VmRSS"), status_mb("RssAnon")
embedder = Embedder(Settings(data_dir=sys.argv[1], embedding_backend=sys.argv[2], embedding_device="cpu"))
for i in range(20):  # what the API does with it: one question at a time
    embedder.embed_queries([f"which compound was used in experiment {i}?"])
print(json.dumps({
    "rss_base_mb": baseline, "rss_mb": status_mb("VmRSS"),
    "anon_delta_mb": status_mb("RssAnon") - anon_baseline, "hwm_mb": status_mb("VmHWM"),
    "model": embedder.model_name,
}))
"""


def measure_encoder(backend: str, directory: Path) -> dict[str, Any]:
    """RSS that the API's query encoder adds to a fresh process (after pmcqa's imports), per backend. Run
    twice: the first run may export the ONNX model (into PMCQA_EMBEDDING_EXPORT_DIR or `directory`), which
    is a one-off peak, not the steady state."""
    command = [sys.executable, "-c", ENCODER, str(directory), backend, str(REPO)]
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def db_size_mb(settings: Settings) -> float:
    return sum(p.stat().st_size for p in settings.index_dir.glob("pmcqa.sqlite3*")) / 2**20


# --- report -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--papers", type=int, default=None, help="Corpus files to ingest (default: all).")
    parser.add_argument("--repeats", type=int, default=1, help="Ingest repeats; the best time counts.")
    parser.add_argument("--ingest-batch", type=int, default=8, help="Papers per put_papers transaction.")
    parser.add_argument("--small", type=int, default=1_000, help="Chunks in the small library.")
    parser.add_argument("--medium", type=int, default=100_000, help="Chunks in the medium library (0: skip).")
    parser.add_argument("--large", type=int, default=1_000_000, help="Chunks in the large library.")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-encode", action="store_true", help="(a) without the two encode-bound runs.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep stores here (reused if present).")
    parser.add_argument(
        "--encoder-backends",
        default="torch,onnx-int8",
        help="(c) query encoder memory per embedding backend, comma-separated ('' to skip).",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pmcqa-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        table = Table(title="pmcqa index benchmark", show_lines=False)
        for column in ("measure", "value", "target"):
            table.add_column(column)

        if not args.skip_ingest:
            ingest = bench_ingest(args, work)
            table.add_row(
                "(a) corpus",
                f"{ingest['files']} files, {ingest['papers']} papers, {ingest['chunks']} chunks",
                "",
            )
            table.add_row("(a) parse + chunk alone", f"{ingest['parse_chunk_s']:.2f} s", "")
            table.add_row("(a) store writes alone (+FAISS)", f"{ingest['store_s']:.2f} s", "")
            if "encode_s" in ingest:
                overhead = (ingest["parse_chunk_s"] + ingest["store_s"]) / ingest["encode_s"]
                table.add_row("(a) encode alone", f"{ingest['encode_s']:.1f} s", "")
                table.add_row(
                    "(a) parse+chunk+embed+store",
                    f"{ingest['pipeline_s']:.1f} s ({ingest['chunks'] / ingest['pipeline_s']:.1f} chunks/s)",
                    "",
                )
                table.add_row("(a) pipeline / encode", f"{ingest['ratio']:.3f}x", "<= 1.10x")
                table.add_row("(a) (parse+chunk+store) / encode", f"{overhead:.3f}", "<= 0.10")

        results = {}
        sizes = [("1k", args.small), ("100k", args.medium), ("1M", args.large)]
        sizes = [(label, size) for label, size in sizes if size]
        for label, size in sizes:
            directory = work / f"lib-{size}"
            settings = Settings(data_dir=directory)
            if not (settings.index_dir / "pmcqa.sqlite3").exists():
                started = time.perf_counter()
                build_synthetic(directory, size, args.dimension)
                console.print(
                    f"built {label} library ({size} chunks) in {time.perf_counter() - started:.0f} s"
                )
            results[label] = measure_reader(settings, args.queries)
            results[label]["db_mb"] = db_size_mb(settings)

        for label, _ in sizes:
            r = results[label]
            for key, name in (("store_ms", "get_vectors+dot"), ("retrieve_ms", "Retriever.retrieve dense")):
                if key in r:
                    p50, p99 = percentile(r[key], 50), percentile(r[key], 99)
                    table.add_row(f"(b) {name}, {label} library", f"p50 {p50:.3f} ms / p99 {p99:.3f} ms", "")
        for key, name in (("store_ms", "get_vectors+dot"), ("retrieve_ms", "retrieve dense")):
            if "1k" in results and "1M" in results and key in results["1k"]:
                ratio50 = statistics.median(results["1M"][key]) / statistics.median(results["1k"][key])
                table.add_row(f"(b) 1M/1k p50 ratio, {name}", f"{ratio50:.2f}", "<= 1.2")
                if "100k" in results:
                    ratio = statistics.median(results["1M"][key]) / statistics.median(results["100k"][key])
                    table.add_row(f"(b) 1M/100k p50 ratio, {name}", f"{ratio:.2f}", "")
        for label, _ in sizes:
            r = results[label]
            delta = r.get("rss_after_retrieve_mb", r["rss_after_mb"]) - r["rss_base_mb"]
            table.add_row(
                f"(c) reader RSS, {label} library",
                f"+{delta:.0f} MB RSS (+{r['anon_delta_mb']:.0f} MB private) over {r['rss_base_mb']:.0f} MB"
                f" after imports; peak {r['hwm_mb']:.0f} MB; SQLite {r['db_mb']:.0f} MB on disk",
                "O(1) in library size",
            )
        # The API process also holds the query encoder; its share does not depend on the library's size.
        for backend in filter(None, args.encoder_backends.split(",")):
            r = measure_encoder(backend, work / "encoder")
            table.add_row(
                f"(c) query encoder, {backend}",
                f"+{r['rss_mb'] - r['rss_base_mb']:.0f} MB RSS (+{r['anon_delta_mb']:.0f} MB private) over "
                f"{r['rss_base_mb']:.0f} MB after imports; process {r['rss_mb']:.0f} MB, "
                f"peak {r['hwm_mb']:.0f} MB",
                "",
            )
        console.print(table)
        console.print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
