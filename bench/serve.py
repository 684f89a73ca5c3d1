"""`xmine serve` under load: latency, throughput and memory of the real server on 127.0.0.1.

    python -m bench.serve --model MODEL_DIR [--data DATASET_DIR] [--soak-seconds 300] [--update-docs]

1. offline baseline: `predict_labels` on the test texts in one batched call, in this process (texts/s), which
   also gives each text's expected answer;
2. the server in a subprocess (`python -m xmine serve --port 0`), loads from asyncio clients over keep-alive
   connections: single-text requests at concurrency 1, 8 and 32, and 32-text requests; each load is bounded by a
   request count and a time cap; every answer is checked against the offline one;
3. a soak at concurrency 8 for --soak-seconds with 10% malformed requests (each must get a 4xx), sampling the
   server's RSS (growth measured from the end of the first minute to the end);
4. SIGTERM, which must end the server with exit status 0.
Results: bench/results/serve.json; --update-docs writes the table into docs/serving.md between the SERVE markers.
The client shares the machine's cores with the server; load averages are recorded next to each number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serve.json"
DOC = REPO / "docs" / "serving.md"
START, END = "<!-- SERVE:START -->", "<!-- SERVE:END -->"
K = 10
# requests that must be refused with a 4xx (the soak mixes them in)
MALFORMED: list[tuple[str, bytes]] = [
    ("invalid JSON", b'{"inputs": ["unterminated'),
    ("wrong type", b'{"inputs": [1, 2], "k": 10}'),
    ("empty inputs", b'{"inputs": [], "k": 10}'),
    ("k out of range", b'{"inputs": ["a text"], "k": 0}'),
    ("k not an integer", b'{"inputs": ["a text"], "k": "ten"}'),
    ("unknown field", b'{"input": ["a text"]}'),
    ("not an object", b'["a text"]'),
    ("empty body", b""),
]


def load_texts(data: str | None, model_dir: Path, n: int, text_variant: str | None = None) -> tuple[list[str], str]:
    from xmine.data import load_dataset
    from xmine.demo import demo_dataset_path
    from xmine.models.base import read_model_config

    path = Path(data) if data else demo_dataset_path()
    variant = text_variant or read_model_config(model_dir).get("text_variant", "full")
    ds = load_dataset(path, text_variant=variant)
    texts = [t for t in ds.split("test").texts if t.strip()][:n]
    return texts, f"{path.name} test split ({variant} texts)"


def offline_baseline(model_dir: Path, texts: list[str]) -> tuple[float, dict[str, list]]:
    """Texts/s of one batched `predict_labels` call (after a warm-up) and each text's expected answer."""
    from xmine.models import load_model

    model = load_model(model_dir)
    model.predict_labels(texts[:32], k=K)
    start = time.perf_counter()
    ranked = model.predict_labels(texts, k=K)
    seconds = time.perf_counter() - start
    expected = {t: [[i, score] for i, _, score in labels] for t, labels in zip(texts, ranked, strict=True)}
    return len(texts) / seconds, expected


def same_ranking(got: list[dict], want: list[list], tol: float = 1e-4) -> bool:
    """Ids equal in order, scores equal within `tol`; two labels whose scores tie within `tol` may swap."""
    if len(got) != len(want):
        return False
    for pos, (g, (wid, wscore)) in enumerate(zip(got, want, strict=True)):
        if abs(g["score"] - wscore) > tol * max(1.0, abs(wscore)):
            return False
        if g["id"] != wid:
            ties = {w[0] for w in want if abs(w[1] - wscore) <= tol * max(1.0, abs(wscore))}
            if g["id"] not in ties and pos < len(want) - 1:
                return False
    return True


class ServerProcess:
    def __init__(self, model_dir: Path, flags: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "xmine", "serve", "--model", str(model_dir), "--port",
                                      "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.lines: list[str] = []
        found = threading.Event()
        port: list[int] = []

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port.append(int(m.group(1)))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        start = time.perf_counter()
        if not found.wait(600) or not port:
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{port[0]}"
        while httpx.get(self.url + "/health", timeout=30).status_code != 200:
            if time.perf_counter() - start > 600:
                raise RuntimeError("model not ready:\n" + "".join(self.lines))
            time.sleep(0.2)
        self.ready_seconds = time.perf_counter() - start

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load generator shares the cores with the
    server, and a general-purpose async client spends several times more CPU per request than this."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("connection closed by the server")
            status = int(status_line.split()[1])
            length, close = 0, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            payload = await self.reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            raise
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p[0]), 1), "p95_ms": round(float(p[1]), 1), "p99_ms": round(float(p[2]), 1)}


async def run_load(url: str, texts: list[str], expected: dict[str, list], concurrency: int, texts_per_request: int,
                   n_requests: int, time_cap: float, malformed_share: float = 0.0, seed: int = 0,
                   on_tick: Any = None) -> dict[str, Any]:
    """`n_requests` POST /predict from `concurrency` workers (or until `time_cap` seconds), checked answers."""
    rng = random.Random(seed)
    counter = {"next": 0}
    stats = {"ok": 0, "wrong": 0, "errors": 0, "malformed": 0, "malformed_4xx": 0, "malformed_other": 0,
             "texts": 0}
    status_codes: dict[str, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + time_cap

    async def worker() -> None:
        conn = Connection(url)
        while counter["next"] < n_requests and time.perf_counter() < deadline:
            i = counter["next"]
            counter["next"] += 1
            if malformed_share and rng.random() < malformed_share:
                _, body = MALFORMED[i % len(MALFORMED)]
                stats["malformed"] += 1
                try:
                    status, payload = await conn.post("/predict", body)
                    ok = 400 <= status < 500 and "error" in json.loads(payload)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                stats["malformed_4xx" if ok else "malformed_other"] += 1
                continue
            start = (i * texts_per_request) % len(texts)
            batch = [texts[(start + j) % len(texts)] for j in range(texts_per_request)]
            body = json.dumps({"inputs": batch, "k": K}).encode()
            t0 = time.perf_counter()
            try:
                status, payload = await conn.post("/predict", body)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                stats["errors"] += 1
                status_codes[type(exc).__name__] = status_codes.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            status_codes[str(status)] = status_codes.get(str(status), 0) + 1
            if status != 200:
                stats["errors"] += 1
                continue
            preds = json.loads(payload)["predictions"]
            if all(same_ranking(p, expected[t]) for p, t in zip(preds, batch, strict=True)):
                stats["ok"] += 1
                stats["texts"] += len(batch)
            else:
                stats["wrong"] += 1
        await conn.close()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    ticker = asyncio.create_task(on_tick()) if on_tick is not None else None
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if ticker is not None:
        ticker.cancel()
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "texts_per_request": texts_per_request, "requests": counter["next"],
            "seconds": round(wall, 2), "throughput_texts_per_s": round(stats["texts"] / wall, 1),
            **percentiles(latencies), **stats, "status_codes": status_codes,
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def markdown(result: dict[str, Any]) -> str:
    off = result["offline_texts_per_s"]
    loads = [x for row in [*result["loads"].values(), result.get("soak") or {}] for x in row.get("load_avg_1min", [])]
    load = f"; 1-min load average {min(loads):.0f}-{max(loads):.0f} during the runs" if loads else ""
    lines = [f"Model: {result['model']['method']} ({result['model']['n_labels']} labels), texts: "
             f"{result['texts']}; offline batched `predict_labels`: {off:.0f} texts/s. "
             f"{result['machine']['cpus']} CPU cores shared by the server, the load client and other work{load}. "
             f"Mean requests per model call: {result['server'].get('mean_requests_per_model_call', '?')}. "
             f"Command: `{result['command']}`.", "",
             "| load | requests | texts/s | vs offline | p50 ms | p95 ms | p99 ms | errors | wrong |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["loads"].items():
        lines.append(f"| {name} | {row['requests']} | {row['throughput_texts_per_s']:.0f} | "
                     f"{row['throughput_texts_per_s'] / off:.0%} | {row['p50_ms']} | {row['p95_ms']} | "
                     f"{row['p99_ms']} | {row['errors']} | {row['wrong']} |")
    soak = result.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['seconds']:.0f} s at concurrency {soak['concurrency']}, {soak['requests']} "
                  f"requests of which {soak['malformed']} malformed ({soak['malformed_4xx']} answered 4xx, "
                  f"{soak['malformed_other']} otherwise); good requests: {soak['ok']} correct, {soak['wrong']} wrong, "
                  f"{soak['errors']} errors; p99 {soak['p99_ms']} ms. Server RSS {soak['rss_start_mb']:.0f} MB after "
                  f"the first minute, {soak['rss_end_mb']:.0f} MB at the end ({soak['rss_growth_pct']:+.1f}%; peak "
                  f"{soak['rss_peak_mb']:.0f} MB). SIGTERM exit status: {result['exit_status']}."]
    return "\n".join(lines)


def update_docs(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {START} ... {END} block")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--model", required=True, help="trained model directory")
    ap.add_argument("--data", help="dataset whose test texts are sent (default: the bundled demo dataset)")
    ap.add_argument("--texts", type=int, default=1000, help="test texts used (default 1000)")
    ap.add_argument("--text-variant", help="which texts of --data to send (default: the model's, from config.json)")
    ap.add_argument("--soak-seconds", type=float, default=300)
    ap.add_argument("--time-cap", type=float, default=120, help="seconds per load at most")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--server-flag", action="append", default=[],
                    help="extra `xmine serve` flag, e.g. --server-flag=--max-wait-ms=5 (repeatable)")
    ap.add_argument("--update-docs", action="store_true", help="write the table into docs/serving.md")
    ap.add_argument("--report", action="store_true", help="only rebuild the docs table from --out")
    args = ap.parse_args(argv)
    if args.report:
        update_docs(markdown(json.loads(Path(args.out).read_text())))
        return 0
    model_dir = Path(args.model)
    texts, source = load_texts(args.data, model_dir, args.texts, args.text_variant)
    print(f"{len(texts)} texts from {source}", flush=True)
    offline, expected = offline_baseline(model_dir, texts)
    print(f"offline batched predict_labels: {offline:.1f} texts/s", flush=True)
    server = ServerProcess(model_dir, args.server_flag)
    info = httpx.get(server.url + "/info").json()
    print(f"server ready in {server.ready_seconds:.1f}s at {server.url}", flush=True)
    result: dict[str, Any] = {
        "command": "python -m bench.serve " + " ".join(a if " " not in a else repr(a) for a in sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": {"method": info["method"], "n_labels": info["n_labels"], "score_scale": info["score_scale"]},
        "server": {"limits": info["limits"], "batching": info["batching"], "ready_seconds": server.ready_seconds},
        "texts": f"{len(texts)} texts of the {source}", "k": K, "offline_texts_per_s": round(offline, 1),
        "loads": {},
    }
    loads = [("1 text, concurrency 1", 1, 1, 300), ("1 text, concurrency 8", 8, 1, 1000),
             ("1 text, concurrency 32", 32, 1, 2000), ("32 texts, concurrency 4", 4, 32, 120)]
    try:
        asyncio.run(run_load(server.url, texts, expected, 8, 1, 100, 60))  # warm-up, not recorded
        for name, concurrency, per_request, n_requests in loads:
            row = asyncio.run(run_load(server.url, texts, expected, concurrency, per_request, n_requests,
                                       args.time_cap))
            result["loads"][name] = row
            print(f"{name}: {row['throughput_texts_per_s']:.1f} texts/s, p50 {row['p50_ms']} ms, p99 "
                  f"{row['p99_ms']} ms, errors {row['errors']}, wrong {row['wrong']}, load {row['load_avg_1min']}",
                  flush=True)
        if args.soak_seconds > 0:
            samples: list[tuple[float, float]] = []
            soak_start = time.perf_counter()

            async def sample_rss() -> None:
                while True:
                    samples.append((time.perf_counter() - soak_start, server.rss_mb()))
                    await asyncio.sleep(5)

            soak = asyncio.run(run_load(server.url, texts, expected, 8, 1, 10**9, args.soak_seconds,
                                        malformed_share=0.1, seed=1, on_tick=sample_rss))
            samples.append((time.perf_counter() - soak_start, server.rss_mb()))
            after_first_minute = [rss for t, rss in samples if t >= min(60.0, args.soak_seconds / 5)]
            base = after_first_minute[0] if after_first_minute else samples[0][1]
            soak.update({"rss_start_mb": base, "rss_end_mb": samples[-1][1],
                         "rss_peak_mb": max(rss for _, rss in samples),
                         "rss_growth_pct": round(100 * (samples[-1][1] - base) / base, 2),
                         "rss_samples_mb": [[round(t, 1), round(rss, 1)] for t, rss in samples]})
            result["soak"] = soak
            print(f"soak: {soak['requests']} requests, {soak['malformed']} malformed ({soak['malformed_4xx']} 4xx), "
                  f"wrong {soak['wrong']}, errors {soak['errors']}, RSS {base:.0f} -> {samples[-1][1]:.0f} MB "
                  f"({soak['rss_growth_pct']:+.1f}%)", flush=True)
        metrics = httpx.get(server.url + "/metrics").text
        count = re.search(r"^xmine_batch_requests_count (\S+)", metrics, re.M)
        total = re.search(r"^xmine_batch_requests_sum (\S+)", metrics, re.M)
        if count and total:
            result["server"]["mean_requests_per_model_call"] = round(float(total.group(1)) / float(count.group(1)), 2)
    finally:
        result["exit_status"] = server.terminate()
    print(f"SIGTERM -> exit status {result['exit_status']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    if args.update_docs:
        update_docs(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
