"""`xmine serve`: a trained model behind an HTTP API (FastAPI on uvicorn).

    POST /predict  {"inputs": ["text", ...], "k": 10} -> {"predictions": [[{"id", "label", "score"}, ...], ...],
                                                          "truncated": [indices of inputs cut to max_chars]}
    GET  /health   200 when the model is loaded, 503 while loading (or when loading failed)
    GET  /info     method, version, labels, model directory, score scale, limits
    GET  /metrics  Prometheus text format
    POST /reload   load the model directory again (e.g. after `xmine labels add`) and swap it in; also SIGHUP
    GET  /docs     OpenAPI (Swagger UI); /openapi.json

The parts, outside in:
  - `ServeMetrics`: a Prometheus registry per app (requests, errors, latency, batch sizes);
  - `_MetricsMiddleware`: counts and times every HTTP request by route and status;
  - the /predict route: concurrency gate (429 at once beyond `max_concurrent_requests`), body-size limit (413),
    JSON and schema checks (400/422), truncation of long texts, then the batcher;
  - `DynamicBatcher`: concurrent requests queue up and are merged into one model call of at most
    `max_batch_texts` texts (waiting up to `max_wait_ms` for more), run on one worker thread off the event loop;
    each request gets back exactly its own rows;
  - `ModelHolder`: the served model behind one reference. Each batch reads it once, so `swap` (a reload) takes
    effect between batches and never mixes two models in one answer.
Shutdown (SIGTERM): uvicorn stops accepting, in-flight requests finish (their batches still run), the batcher
stops, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from xmine.config import ConfigError, Params
from xmine.errors import XmineError
from xmine.utils import set_threads

log = logging.getLogger("xmine.serve")

ROUTES = ("/predict", "/health", "/info", "/metrics", "/reload", "/docs", "/openapi.json")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServeConfig(Params):
    """Server settings: prediction-time only, nothing here changes a model."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_texts: int = 64  # texts per merged model call (a larger single request runs alone)
    max_wait_ms: float = 2.0  # how long a batch waits for more requests once the queue is empty
    max_texts_per_request: int = 256
    max_chars_per_text: int = 5000  # longer texts are cut to this many characters (reported in "truncated")
    max_body_bytes: int = 2 * 1024 * 1024
    max_concurrent_requests: int = 256  # /predict requests in the server at once; beyond: 429 at once
    default_k: int = 10
    graceful_timeout_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish
    access_log: bool = False
    threads: int | None = None  # threads of the model call (torch, faiss, numba); None: the libraries' default

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be in 0..65535 (0: any free port), got {self.port}")
        for name in ("max_batch_texts", "max_texts_per_request", "max_chars_per_text", "max_body_bytes",
                     "max_concurrent_requests", "default_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve.threads must be >= 1, got {self.threads}")
        if self.max_wait_ms < 0 or self.graceful_timeout_s < 0:
            raise ConfigError("serve.max_wait_ms and serve.graceful_timeout_s must be >= 0")


# ---------------------------------------------------------------------------------------------- model holder
@dataclass
class LoadedModel:
    """One loaded model and what /info says about it."""

    model: Any  # an XMCModel
    directory: Path
    method: str
    n_labels: int
    loaded_at: float = field(default_factory=time.time)
    generation: int = 0  # 1 for the first load, +1 per swap


class ModelHolder:
    """The served model behind a single reference. Readers take `current` once per batch; `swap` replaces it
    in one assignment (atomic in CPython), so a reload never changes a model under a running batch."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # serialises swaps (generation numbers), not reads
        self.load_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def swap(self, loaded: LoadedModel) -> LoadedModel | None:
        """Install `loaded`; returns the model it replaced (None on the first load)."""
        with self._lock:
            old = self._current
            loaded.generation = (old.generation if old is not None else 0) + 1
            self._current = loaded
            self.load_error = None
        return old


def load_for_serving(directory: str | Path) -> LoadedModel:
    """Load a model directory and run one warm-up prediction (first calls pay one-off set-up costs)."""
    from xmine.models import load_model

    model = load_model(directory)
    model.predict_labels(["warm-up"], k=1)
    return LoadedModel(model=model, directory=Path(directory).resolve(), method=model.method,
                       n_labels=int(model.n_labels))


def reload_model(holder: ModelHolder, directory: str | Path, lock: threading.Lock) -> LoadedModel:
    """Load `directory` again beside the served model and swap it in (xmine labels add/disable change a model
    directory in place). Batches running on the old model finish on it; the next batch uses the new one. A
    failed load raises and leaves the old model serving. `lock` serialises reloads."""
    with lock:
        start = time.perf_counter()
        loaded = load_for_serving(directory)
        holder.swap(loaded)
        log.info("model %s reloaded (%d labels, generation %d) in %.1fs", loaded.directory, loaded.n_labels,
                 loaded.generation, time.perf_counter() - start)
        return loaded


# --------------------------------------------------------------------------------------------------- metrics
class ServeMetrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("xmine_http_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("xmine_http_errors", "HTTP requests answered with a 4xx or 5xx status, by reason",
                              ["reason"], registry=self.registry)
        self.latency = Histogram("xmine_http_request_duration_seconds", "time to answer, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.texts = Counter("xmine_predicted_texts", "texts predicted", registry=self.registry)
        self.batch_texts = Histogram("xmine_batch_texts", "texts per merged model call", buckets=BATCH_BUCKETS,
                                     registry=self.registry)
        self.batch_requests = Histogram("xmine_batch_requests", "requests merged into one model call",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.model_seconds = Histogram("xmine_model_call_duration_seconds", "time of one merged model call",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("xmine_predict_in_flight", "/predict requests being answered",
                               registry=self.registry)
        self.ready = Gauge("xmine_model_ready", "1 when a model is loaded", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _MetricsMiddleware:
    """Pure ASGI middleware: every HTTP request counted and timed by route (unknown paths as "other")."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("path", "") if scope.get("path", "") in ROUTES else "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


# -------------------------------------------------------------------------------------------------- batching
@dataclass
class _Pending:
    texts: list[str]
    k: int
    future: asyncio.Future


class DynamicBatcher:
    """Merges concurrent prediction requests into one model call on a single worker thread."""

    def __init__(self, holder: ModelHolder, max_batch_texts: int, max_wait_ms: float,
                 metrics: ServeMetrics | None = None) -> None:
        self.holder, self.max_batch_texts, self.max_wait = holder, max_batch_texts, max_wait_ms / 1000
        self.metrics = metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None  # the request that did not fit into the previous batch
        self._task: asyncio.Task | None = None
        # one thread: model calls never overlap (the model's own threads use the cores)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmine-model")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xmine-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str], k: int) -> list[list[tuple[int, str | None, float]]]:
        """The ranked labels of `texts`, computed in whichever merged batch they land in."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(texts, k, future))
        return await future

    async def _next_batch(self) -> list[_Pending]:
        assert self._queue is not None
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, n_texts = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        while n_texts < self.max_batch_texts:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if n_texts + len(item.texts) > self.max_batch_texts:
                self._carry = item
                break
            batch.append(item)
            n_texts += len(item.texts)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            loaded = self.holder.current  # read once: the whole batch is answered by one model
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            if loaded is None:
                for p in live:
                    p.future.set_exception(RuntimeError("no model loaded"))
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, _predict_batch, loaded.model, live)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which answers 500;
                # the loop itself must survive, or every later request would wait forever
                log.exception("model call failed for a batch of %d requests", len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            if self.metrics is not None:
                n_texts = sum(len(p.texts) for p in live)
                self.metrics.batch_texts.observe(n_texts)
                self.metrics.batch_requests.observe(len(live))
                self.metrics.texts.inc(n_texts)
                self.metrics.model_seconds.observe(time.perf_counter() - start)
            for p, result in zip(live, results, strict=True):
                if not p.future.done():  # a cancelled waiter (client gone) needs no answer
                    p.future.set_result(result)


def _predict_batch(model: Any, batch: list[_Pending]) -> list[list[list[tuple[int, str | None, float]]]]:
    """One model call per distinct k in the batch (usually one), split back into the requests' own rows.
    Grouping by k keeps every answer identical to `predict_labels(texts, k)` of the request alone."""
    out: list[Any] = [None] * len(batch)
    for k in sorted({p.k for p in batch}):
        members = [i for i, p in enumerate(batch) if p.k == k]
        texts = [t for i in members for t in batch[i].texts]
        ranked = model.predict_labels(texts, k=k)
        start = 0
        for i in members:
            out[i] = ranked[start:start + len(batch[i].texts)]
            start += len(batch[i].texts)
    return out


# ------------------------------------------------------------------------------------------------------ app
class PredictRequest(BaseModel):
    """Body of POST /predict."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = Field(
        description="one text or a list of non-empty texts (at most max_texts_per_request, see /info); texts "
                    "longer than max_chars_per_text characters are cut to that length")
    k: StrictInt | None = Field(None, description="labels per text, 1..number of labels (default: default_k)")


class LabelScore(BaseModel):
    id: int = Field(description="label id (column of the training label matrix)")
    label: str | None = Field(description="the label's text; null when the model has no label texts")
    score: float = Field(description="higher is better; its scale depends on the model (score_scale in /info)")


class PredictResponse(BaseModel):
    predictions: list[list[LabelScore]] = Field(description="per input, its top-k labels, best first")
    truncated: list[int] = Field(description="indices of the inputs cut to max_chars_per_text")


class _RequestError(Exception):
    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


def _error_reason(status: int) -> str:
    return {400: "bad_json", 413: "too_large", 422: "invalid_request", 429: "too_many_requests",
            503: "not_ready"}.get(status, "client_error" if status < 500 else "server_error")


def create_app(model_dir: str | Path, config: ServeConfig | None = None, holder: ModelHolder | None = None,
               on_load_failure: Callable[[str], None] | None = None) -> Any:
    """The ASGI app serving `model_dir`. The model loads in a background thread at startup (/health says 503
    until it is ready); `on_load_failure(message)` is called if loading fails (`xmine serve` then exits 1)."""
    from xmine import __version__

    config = config or ServeConfig()
    holder = holder or ModelHolder()
    metrics = ServeMetrics()
    batcher = DynamicBatcher(holder, config.max_batch_texts, config.max_wait_ms, metrics)
    state = {"in_flight": 0}
    reload_lock = threading.Lock()

    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        batcher.start()
        loader = threading.Thread(target=_load, name="xmine-model-loader", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await batcher.stop()

    def _load() -> None:
        try:
            start = time.perf_counter()
            loaded = load_for_serving(model_dir)
            holder.swap(loaded)
            metrics.ready.set(1)
            log.info("model %s (%s, %d labels) ready in %.1fs", loaded.directory, loaded.method, loaded.n_labels,
                     time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - reported through /health and on_load_failure
            holder.load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, XmineError) else str(exc)
            log.error("loading %s failed: %s", model_dir, holder.load_error)
            if on_load_failure is not None:
                on_load_failure(holder.load_error)

    app = FastAPI(title="xmine", version=__version__, lifespan=lifespan,
                  description="Extreme multi-label classification: texts in, ranked labels out.")
    app.state.holder, app.state.batcher, app.state.metrics, app.state.config = holder, batcher, metrics, config
    app.state.reload = lambda: reload_model(holder, model_dir, reload_lock)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    def error_response(status: int, message: str, details: list[Any] | None = None,
                       headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(_error_reason(status)).inc()
        body: dict[str, Any] = {"error": message}
        if details:
            body["details"] = details
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # logged here with its traceback; the client sees a one-line JSON error, never the traceback
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return error_response(500, "internal server error")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _RequestError(400, "invalid Content-Length header")
            if int(declared) > config.max_body_bytes:
                raise _RequestError(413, f"request body of {declared} bytes exceeds max_body_bytes "
                                         f"({config.max_body_bytes})")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a Content-Length
            size += len(chunk)
            if size > config.max_body_bytes:
                raise _RequestError(413, f"request body exceeds max_body_bytes ({config.max_body_bytes})")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse_request(body: bytes, n_labels: int) -> tuple[list[str], int, list[int]]:
        if not body.strip():
            raise _RequestError(400, 'empty request body; expected JSON such as {"inputs": ["text"], "k": 10}')
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise _RequestError(400, f"request body is not valid JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise _RequestError(422, f"expected a JSON object with 'inputs', got a JSON {type(payload).__name__}")
        try:
            req = PredictRequest.model_validate(payload)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise _RequestError(422, f"{where}: {first['msg']}", [
                {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]) from None
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        if not texts:
            raise _RequestError(422, "inputs: empty list; send at least one text")
        if len(texts) > config.max_texts_per_request:
            raise _RequestError(413, f"inputs: {len(texts)} texts exceed max_texts_per_request "
                                     f"({config.max_texts_per_request}); split the request")
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise _RequestError(422, f"inputs[{blank[0]}]: empty text ({len(blank)} empty in all)")
        k = config.default_k if req.k is None else req.k
        if not 1 <= k <= n_labels:
            raise _RequestError(422, f"k: must be between 1 and the number of labels ({n_labels}), got {k}")
        truncated = [i for i, t in enumerate(texts) if len(t) > config.max_chars_per_text]
        for i in truncated:
            texts[i] = texts[i][:config.max_chars_per_text]
        return texts, k, truncated

    @app.post("/predict", response_model=PredictResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
        responses={400: {"description": "body is not JSON"}, 413: {"description": "body or input list too large"},
                   422: {"description": "wrong types, empty inputs, k out of range"},
                   429: {"description": "max_concurrent_requests reached"}, 503: {"description": "model loading"}})
    async def predict(request: Request) -> Response:
        """Top-k labels with their texts and scores for each input text (dynamically batched)."""
        if state["in_flight"] >= config.max_concurrent_requests:
            return error_response(429, f"server busy: {config.max_concurrent_requests} requests in progress "
                                       "(max_concurrent_requests); retry shortly", headers={"Retry-After": "1"})
        state["in_flight"] += 1
        metrics.in_flight.inc()
        try:
            loaded = holder.current
            if loaded is None:
                return error_response(503, "model is loading" if holder.load_error is None
                                      else f"model failed to load: {holder.load_error}", headers={"Retry-After": "1"})
            texts, k, truncated = parse_request(await read_body(request), loaded.n_labels)
            ranked = await batcher.submit(texts, k)
            predictions = [[{"id": i, "label": name, "score": score} for i, name, score in labels]
                           for labels in ranked]
            return Response(json.dumps({"predictions": predictions, "truncated": truncated}, ensure_ascii=False),
                            media_type="application/json")
        except _RequestError as exc:
            return error_response(exc.status, exc.message, exc.details)
        finally:
            state["in_flight"] -= 1
            metrics.in_flight.dec()

    @app.post("/reload", responses={500: {"description": "the model directory could not be loaded; the old model "
                                                         "keeps serving"}})
    async def reload() -> JSONResponse:
        """Load the model directory again and swap it in between batches (requests in flight are answered by the
        old model or the new one, never a mix). Answers when the new model serves."""
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(None, app.state.reload)
        except Exception as exc:  # noqa: BLE001 - the old model keeps serving; the client gets the reason
            message = str(exc) if isinstance(exc, XmineError) else f"{type(exc).__name__}: {exc}"
            log.error("reloading %s failed: %s", model_dir, message)
            return error_response(500, f"reload failed, the previous model keeps serving: {message}")
        return JSONResponse({"status": "ok", "model_generation": loaded.generation, "n_labels": loaded.n_labels,
                             **_label_counts(loaded.model)})

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when a model is loaded and answering; 503 while loading or after a failed load."""
        loaded = holder.current
        if loaded is None:
            status = "loading" if holder.load_error is None else "failed"
            body: dict[str, Any] = {"status": status}
            if holder.load_error is not None:
                body["error"] = holder.load_error
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> JSONResponse:
        """The served model and the server's limits."""
        loaded = holder.current
        body: dict[str, Any] = {"xmine_version": __version__, "ready": loaded is not None,
                                "model_dir": str(Path(model_dir).resolve())}
        if loaded is not None:
            body.update({"method": loaded.method, "n_labels": loaded.n_labels,
                         "has_label_texts": loaded.model.label_texts is not None,
                         "score_scale": loaded.model.score_scale(), "model_generation": loaded.generation,
                         "loaded_at": loaded.loaded_at, **_label_counts(loaded.model)})
        body["limits"] = {"max_texts_per_request": config.max_texts_per_request,
                          "max_chars_per_text": config.max_chars_per_text, "max_body_bytes": config.max_body_bytes,
                          "max_concurrent_requests": config.max_concurrent_requests, "default_k": config.default_k,
                          "max_k": loaded.n_labels if loaded is not None else None}
        body["batching"] = {"max_batch_texts": config.max_batch_texts, "max_wait_ms": config.max_wait_ms,
                            "threads": config.threads}
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return app


def _reload_logged(app: Any) -> None:
    try:
        app.state.reload()
    except Exception as exc:  # noqa: BLE001 - a signal has no caller to tell: logged, the old model serves on
        log.error("reload on SIGHUP failed, the previous model keeps serving: %s", exc)


def _label_counts(model: Any) -> dict[str, int]:
    """Labels added after training and disabled (xmine.labels), for /info and /reload."""
    state = model.__dict__.get("label_state")
    return {"labels_added_after_training": state.n_added if state is not None else 0,
            "labels_disabled": int(len(state.disabled)) if state is not None else 0}


# ------------------------------------------------------------------------------------------------------- run
def serve(model_dir: str | Path, config: ServeConfig | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a graceful shutdown, 1 if the model failed to load."""
    import uvicorn

    from xmine.models.base import read_model_config

    config = config or ServeConfig()
    read_model_config(model_dir)  # a wrong path fails here, before the server starts
    set_threads(config.threads)
    failed: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_failure(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(model_dir, config, on_load_failure=on_load_failure)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                           access_log=config.access_log, lifespan="on",
                                           timeout_graceful_shutdown=config.graceful_timeout_s))
    # uvicorn drains on SIGTERM and then re-raises the signal so that the default action (death by signal)
    # follows; a handler of our own makes that last step a no-op and a drained shutdown exits 0
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # SIGHUP: reload the model directory (as POST /reload), in a thread so that the server keeps answering
    previous_hup = signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(
        target=_reload_logged, args=(app,), name="xmine-reload", daemon=True).start())
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
    if failed:
        raise XmineError(f"the model could not be loaded: {failed[0]}")
    return 0
