"""`xmine serve` over a real loopback socket (a uvicorn subprocess on an ephemeral port), `predict_labels`,
label texts in model directories, `xmine predict --input` and training on a dataset without a test split."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from xmine.cli import main
from xmine.config import KNNConfig
from xmine.data import Dataset, Split, load_dataset
from xmine.errors import XmineError
from xmine.models import TfidfKNN, load_model
from xmine.models.base import write_manifest

REPO = Path(__file__).resolve().parents[1]
# the test server's limits (small, so that each bad-request class is cheap to provoke)
MAX_TEXTS, MAX_CHARS, MAX_BODY, MAX_CONCURRENT = 16, 200, 20_000, 4


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ds(small_hpo):
    return load_dataset(small_hpo)


@pytest.fixture(scope="module")
def knn_dir(ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-knn") / "model"
    TfidfKNN.train(ds, KNNConfig()).save(out)
    return out


@pytest.fixture(scope="module")
def model(knn_dir):
    return load_model(knn_dir)


@pytest.fixture(scope="module")
def texts(ds) -> list[str]:
    return list(ds.test.texts[:48])


class Server:
    """`python -m xmine serve` in a subprocess; its port is read from uvicorn's start-up line."""

    def __init__(self, model_dir: Path, *flags: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "xmine", "serve", "--model", str(model_dir), "--port",
                                      "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     text=True)
        self.lines: list[str] = []
        port: list[int] = []
        started = threading.Event()

        def read() -> None:  # drains the pipe for the server's whole life
            for line in self.proc.stdout:
                self.lines.append(line)
                found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
                if found:
                    port.append(int(found.group(1)))
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(120) or not port:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self.url = f"http://127.0.0.1:{port[0]}"
        deadline = time.monotonic() + 120
        while httpx.get(self.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "model not ready:\n" + "".join(self.lines)
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(knn_dir):
    srv = Server(knn_dir, "--max-texts-per-request", str(MAX_TEXTS), "--max-chars-per-text", str(MAX_CHARS),
                 "--max-body-bytes", str(MAX_BODY), "--max-concurrent-requests", str(MAX_CONCURRENT),
                 "--max-wait-ms", "20", "--threads", "1")
    yield srv
    srv.stop()


def as_json(ranked) -> list[list[dict]]:
    return [[{"id": i, "label": name, "score": score} for i, name, score in labels] for labels in ranked]


def post(url: str, body, client: httpx.Client | None = None) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    if isinstance(body, (bytes, str)):
        return send(url + "/predict", content=body, headers={"content-type": "application/json"}, timeout=60)
    return send(url + "/predict", json=body, timeout=60)


# ---------------------------------------------------------------------------------------- predict_labels
def test_predict_labels_ranks_named_labels_like_the_score_matrix(ds, model, texts):
    ranked = model.predict_labels(texts[:10], k=5)
    pred = model.predict(texts[:10], k=5)
    assert len(ranked) == 10
    for row, labels in enumerate(ranked):
        scores = [s for _, _, s in labels]
        assert scores == sorted(scores, reverse=True) and len(labels) == pred[row].nnz
        dense = pred[row].toarray().ravel()
        for label_id, name, score in labels:
            assert name == ds.label_texts[label_id]
            assert score == pytest.approx(float(dense[label_id]), rel=1e-6)
    assert model.predict_labels("one text", k=3) == model.predict_labels(["one text"], k=3)
    assert model.predict_labels([], k=3) == []
    with pytest.raises(XmineError, match="k must be"):
        model.predict_labels(["x"], k=0)


@pytest.mark.parametrize("method", ["ngame", "mips"])
def test_every_method_stores_its_label_texts(ds, tiny_model_dir, tmp_path, method):
    from xmine.config import ClassifierConfig, EncoderConfig, MIPSMethodConfig, NGAMEConfig, SiameseConfig
    from xmine.models import NGAME, MIPSClassifier

    encoder = EncoderConfig(kind="bow", model_path=str(tiny_model_dir), head_hidden=32, num_threads=2)
    # 300 training points, one epoch: only the label texts' way into the model directory is under test
    small = Dataset(ds.path, Split(ds.train.labels[:300], ds.train.texts[:300]), None, ds.n_labels, ds.label_texts,
                    ds.text_variant, ds.layout)
    if method == "ngame":  # stage 1 only: label texts are stored whatever stages ran
        trained = NGAME.train(small, NGAMEConfig(encoder=encoder, siamese=SiameseConfig(epochs=1, batch_size=300),
                                                 stages=[1]), progress=False)
    else:
        trained = MIPSClassifier.train(small, MIPSMethodConfig(encoder=encoder, classifier=ClassifierConfig(
            epochs=1, features="dense")), progress=False)
    trained.save(tmp_path / method)
    lines = (tmp_path / method / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ds.label_texts
    loaded = load_model(tmp_path / method)
    assert loaded.label_texts == ds.label_texts
    ranked = loaded.predict_labels(ds.test.texts[:2], k=4)
    assert all(name == ds.label_texts[i] for labels in ranked for i, name, _ in labels)
    assert isinstance(loaded.score_scale(), str) and loaded.score_scale()


def test_label_texts_missing_or_corrupt(knn_dir, tmp_path, texts):
    old = tmp_path / "old"
    shutil.copytree(knn_dir, old)
    lines = (knn_dir / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    (old / "labels.jsonl").write_text("\n".join(lines[:5] + ["not json"] + lines[6:]) + "\n", encoding="utf-8")
    with pytest.raises(XmineError, match=r"labels.jsonl: does not match the checksum"):
        load_model(old)
    write_manifest(old)  # as if saved so: the loader's own check
    with pytest.raises(XmineError, match=r"labels.jsonl: line 6: not a JSON string"):
        load_model(old)
    (old / "labels.jsonl").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    write_manifest(old)
    with pytest.raises(XmineError, match="label texts but the model has"):
        load_model(old)
    (old / "labels.jsonl").unlink()  # as a model trained without label texts
    write_manifest(old)
    ranked = load_model(old).predict_labels(texts[:2], k=3)
    assert all(name is None for labels in ranked for _, name, _ in labels)


# -------------------------------------------------------------------------------------------------- server
def test_server_answers_equal_predict_labels(server, model, texts):
    r = post(server.url, {"inputs": texts[:8], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == as_json(model.predict_labels(texts[:8], k=5)) and body["truncated"] == []
    one = post(server.url, {"inputs": texts[0]})  # a single string, default k
    assert one.json()["predictions"] == as_json(model.predict_labels([texts[0]], k=10))


def test_concurrent_distinct_requests_get_their_own_answers(server, model, texts):
    expected = {t: as_json(model.predict_labels([t], k=3))[0] for t in texts}

    def worker(part: list[str]) -> list[tuple[str, int, list]]:
        out = []
        with httpx.Client(timeout=60) as client:
            for text in part:
                r = post(server.url, {"inputs": [text], "k": 3}, client)
                out.append((text, r.status_code, r.json()["predictions"][0] if r.status_code == 200 else r.text))
        return out

    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:  # never more in flight than the limit: no 429 expected
        results = [x for part in pool.map(worker, [texts[i::MAX_CONCURRENT] for i in range(MAX_CONCURRENT)])
                   for x in part]
    assert len(results) == len(texts)
    for text, status, answer in results:
        assert status == 200, answer
        assert answer == expected[text]
    metrics = httpx.get(server.url + "/metrics").text
    merged_calls = float(re.search(r"^xmine_batch_requests_count (\S+)", metrics, re.M).group(1))
    requests = float(re.search(r"^xmine_batch_requests_sum (\S+)", metrics, re.M).group(1))
    assert merged_calls < requests  # some model calls answered several requests at once


@pytest.mark.parametrize("body, status, message", [
    (b'{"inputs": ["a"', 400, "not valid JSON"),
    (b"", 400, "empty request body"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b'["a", "b"]', 422, "JSON object"),
    ({"inputs": [1, 2]}, 422, "inputs"),
    ({"inputs": "x", "k": "5"}, 422, "k"),
    ({"inputs": "x", "k": 2.5}, 422, "k"),
    ({"text": ["a"]}, 422, "inputs"),
    ({"inputs": ["a"], "kk": 3}, 422, "kk"),
    ({"inputs": []}, 422, "empty list"),
    ({"inputs": ["fine", "  "]}, 422, r"inputs\[1\]: empty text"),
    ({"inputs": ["a"], "k": 0}, 422, "k: must be between 1"),
    ({"inputs": ["a"], "k": 10**9}, 422, "k: must be between 1"),
    ({"inputs": ["a"] * (MAX_TEXTS + 1)}, 413, "max_texts_per_request"),
    ({"inputs": ["a" * MAX_BODY]}, 413, "max_body_bytes"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_answering(server, model, texts, body, status,
                                                                             message):
    r = post(server.url, body)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"])
    good = post(server.url, {"inputs": [texts[1]], "k": 2})
    assert good.status_code == 200 and good.json()["predictions"] == as_json(model.predict_labels([texts[1]], k=2))


def test_oversized_chunked_body_wrong_method_and_unknown_path(server):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    r = httpx.post(server.url + "/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
    assert httpx.get(server.url + "/predict").status_code == 405
    assert httpx.get(server.url + "/nope").status_code == 404
    assert "xmine_http_requests_total{route=\"/predict\",status=\"500\"}" not in httpx.get(server.url + "/metrics").text


def test_long_texts_are_truncated_and_reported(server, model, texts):
    long_text = (texts[0] + " ") * (MAX_CHARS // max(len(texts[0]), 1) + 5)
    r = post(server.url, {"inputs": [texts[1], long_text], "k": 4})
    assert r.status_code == 200 and r.json()["truncated"] == [1]
    assert r.json()["predictions"] == as_json(model.predict_labels([texts[1], long_text[:MAX_CHARS]], k=4))


def test_a_burst_beyond_the_limit_gets_429_at_once_then_service_resumes(server, model, texts):
    barrier = threading.Barrier(24)

    def one(i: int) -> int:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return post(server.url, {"inputs": texts[i:i + MAX_TEXTS], "k": 5}, client).status_code

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(one, range(24)))
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) > 0
    r = post(server.url, {"inputs": [texts[2]], "k": 2})
    assert r.status_code == 200 and r.json()["predictions"] == as_json(model.predict_labels([texts[2]], k=2))
    assert "xmine_http_errors_total{reason=\"too_many_requests\"}" in httpx.get(server.url + "/metrics").text


def test_health_info_metrics_and_openapi(server, knn_dir, model):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["method"] == "knn" and info["n_labels"] == model.n_labels and info["has_label_texts"]
    assert info["model_dir"] == str(knn_dir.resolve()) and info["ready"]
    assert info["limits"]["max_texts_per_request"] == MAX_TEXTS and info["limits"]["max_k"] == model.n_labels
    assert info["batching"] == {"max_batch_texts": 64, "max_wait_ms": 20.0, "threads": 1}
    post(server.url, {"inputs": ["x"], "k": 1})
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("xmine_http_requests_total", "xmine_http_request_duration_seconds_bucket", "xmine_batch_texts_bucket",
                 "xmine_batch_requests_bucket", "xmine_model_call_duration_seconds_bucket", "xmine_model_ready 1.0"):
        assert name in metrics.text
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "inputs" in json.dumps(spec["paths"]["/predict"]["post"]["requestBody"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(knn_dir, model, texts):
    # a long batching wait keeps the request in flight when SIGTERM arrives
    srv = Server(knn_dir, "--max-wait-ms", "1500", "--max-batch-texts", "1000")
    result: dict = {}

    def call() -> None:
        result["response"] = post(srv.url, {"inputs": texts[:3], "k": 3})

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    caller.join(60)
    assert srv.proc.wait(60) == 0, "".join(srv.lines)
    r = result["response"]
    assert r.status_code == 200 and r.json()["predictions"] == as_json(model.predict_labels(texts[:3], k=3))
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/health")


def test_health_is_503_when_the_model_cannot_load(knn_dir, tmp_path):
    from fastapi.testclient import TestClient

    from xmine.serve import create_app

    broken = tmp_path / "broken"
    shutil.copytree(knn_dir, broken)
    (broken / "train.npz").unlink()
    failures: list[str] = []
    with TestClient(create_app(broken, on_load_failure=failures.append)) as client:
        deadline = time.monotonic() + 60
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "train.npz" in r.json()["error"]
        assert client.post("/predict", json={"inputs": ["x"]}).status_code == 503


# ---------------------------------------------------------------------------------------------------- CLI
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_predict_input_jsonl_tsv_and_stdin(knn_dir, model, texts, tmp_path, capsys, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts[:5]) + "\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "-q", "predict", "--model", str(knn_dir), "--input", str(path), "-k", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["text"] for r in rows] == texts[:5]
    assert [r["labels"] for r in rows] == as_json(model.predict_labels(texts[:5], k=3))

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(texts[:4]).encode())))
    out_file = tmp_path / "pred.tsv"
    code, _, _ = run_cli(capsys, "-q", "predict", "--model", str(knn_dir), "--input", "-", "-k", "2", "--format",
                         "tsv", "--out", str(out_file))
    lines = out_file.read_text(encoding="utf-8").splitlines()
    expected = model.predict_labels(texts[:4], k=2)  # kNN: a text may have fewer than k voted labels
    assert code == 0 and lines[0] == "line\trank\tid\tlabel\tscore"
    assert len(lines) == 1 + sum(len(labels) for labels in expected)
    for line in lines[1:]:
        n, rank, label_id, name, score = line.split("\t")
        want = expected[int(n) - 1][int(rank) - 1]
        assert (int(label_id), name) == want[:2] and float(score) == pytest.approx(want[2], rel=1e-5)


def test_cli_predict_input_errors(knn_dir, small_hpo, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbroken \xff text\n")
    code, _, err = run_cli(capsys, "predict", "--model", str(knn_dir), "--input", str(bad))
    assert code == 1 and "line 2" in err and "UTF-8" in err
    code, _, err = run_cli(capsys, "predict", "--model", str(knn_dir))
    assert code == 1 and "--data DIR" in err and "--input" in err
    code, _, err = run_cli(capsys, "predict", "--model", str(knn_dir), "--input", str(bad), "--data", str(small_hpo))
    assert code == 1
    with pytest.raises(SystemExit):  # --text is not an abbreviation of --text-variant
        main(["predict", "--model", str(knn_dir), "--data", str(small_hpo), "--out", "x.npz", "--text", "full"])


def test_train_on_a_dataset_without_a_test_split(small_hpo, tmp_path, capsys):
    train_only = tmp_path / "train-only"
    train_only.mkdir()
    for name in ("trn_X.txt", "trn_X_Y.txt", "Y.txt"):
        shutil.copy(small_hpo / name, train_only / name)
    ds = load_dataset(train_only)
    assert ds.test is None and ds.train.n_points == 2000
    code, out, _ = run_cli(capsys, "-q", "train", "--method", "knn", "--data", str(train_only), "--out",
                           str(tmp_path / "m"))
    assert code == 0 and "trained knn" in out
    assert load_model(tmp_path / "m").label_texts == ds.label_texts
    code, _, err = run_cli(capsys, "predict", "--model", str(tmp_path / "m"), "--data", str(train_only), "--out",
                           str(tmp_path / "p.npz"))
    assert code == 1 and "has no test split" in err
    code, out, _ = run_cli(capsys, "data", "stats", str(train_only), "--json")
    assert code == 0 and json.loads(out)["n_test"] == 0
    shutil.copy(small_hpo / "tst_X.txt", train_only / "tst_X.txt")  # half a test split is an error
    with pytest.raises(XmineError, match=r"tst_X_Y.txt: file not found"):
        load_dataset(train_only)


def test_scores_sort_with_ties_broken_by_id():
    import scipy.sparse as sp

    from xmine.models.base import ranked_labels

    pred = sp.csr_matrix(np.array([[0.5, 0.9, 0.5, 0], [0, 0, 0, 0], [0.1, 0, 0, 0.2]], dtype=np.float32))
    ranked = ranked_labels(pred, ["a", "b", "c", "d"])
    assert [[i for i, _, _ in row] for row in ranked] == [[1, 0, 2], [], [3, 0]]
    assert ranked[2][0][1] == "d"


def test_serve_refuses_bad_settings_and_missing_models_before_starting(knn_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "serve", "--model", str(knn_dir), "--max-batch-texts", "0")
    assert code == 1 and "max_batch_texts must be >= 1" in err
    code, _, err = run_cli(capsys, "serve", "--model", str(knn_dir), "--threads", "0")
    assert code == 1 and "serve.threads must be >= 1, got 0" in err
    code, _, err = run_cli(capsys, "serve", "--model", str(tmp_path / "nope"))
    assert code == 1 and "not a model directory" in err
