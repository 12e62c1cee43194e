"""--mode=serve: request parsing, dynamic batching, and the real server as a subprocess.

The subprocess tests share one server (`launch.py --mode=serve` on a tiny v1.1 T5 with fixed
random weights, whose greedy outputs are non-empty and differ per input) and end with its
SIGTERM. Each decode call of that server is slowed by 0.2 s (tests/launch_util.py), so that
concurrent requests pile up as under load and a request is surely in flight at SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from distill_jax import serve
from distill_jax.errors import UserError
from tests import fixtures, launch_util

# ---- request parsing and the batcher, in process -----------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "exactly one of 'input'"),
        (b'{"input": "a", "inputs": ["b"]}', "exactly one of 'input'"),
        (b'{"input": 3}', "'input' must be a string"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": "a"}', "non-empty list"),
        (b'{"inputs": ["a", null]}', "'inputs'[1] must be a string"),
        (b'{"input": "a", "rationale": "yes"}', "'rationale' must be true or false"),
        (b'{"input": "a", "rationales": true}', "unknown field(s) ['rationales']"),
    ],
)
def test_parse_request_rejects_bad_bodies(body, message):
    with pytest.raises(serve.BadRequest, match=re.escape(message)):
        serve.parse_request(body, has_rationales=True)


def test_parse_request_accepts_both_shapes():
    assert serve.parse_request(b'{"input": "x"}', True) == (["x"], True, False)
    assert serve.parse_request(b'{"inputs": ["x", ""], "rationale": true}', True) == (
        ["x", ""],
        False,
        True,
    )
    with pytest.raises(serve.BadRequest, match="without the explain: task"):
        serve.parse_request(b'{"input": "x", "rationale": true}', has_rationales=False)


class FakePredictor:
    """Outputs '<task>:<text>'; records each decode's (task, texts, rows)."""

    label_task = "predict"
    has_rationales = True

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[str, list[str], int]] = []
        self.delay = delay

    def encode(self, texts, task):
        return list(texts)

    def generate(self, texts, task, *, batch_size):
        time.sleep(self.delay)
        self.calls.append((task, texts, batch_size))
        return [f"{task}:{t}" for t in texts]


def test_batcher_groups_concurrent_requests_and_routes_results():
    fake = FakePredictor(delay=0.05)
    batcher = serve.Batcher(fake, row_buckets=[2, 8], max_wait_s=0.02)
    try:
        futures = [batcher.submit([f"x{i}"], ["predict"]) for i in range(20)]
        both = batcher.submit(["a", "b"], ["predict", "explain"])
        results = [f.result(timeout=10) for f in futures]
        assert results == [{"predict": [f"predict:x{i}"]} for i in range(20)]
        assert both.result(timeout=10) == {
            "predict": ["predict:a", "predict:b"],
            "explain": ["explain:a", "explain:b"],
        }
    finally:
        batcher.stop()
    # 24 units in batches of at most 8 rows, each task decoded separately, in compiled sizes.
    assert sum(len(texts) for _, texts, _ in fake.calls) == 24
    assert all(len(texts) <= 8 and rows in (2, 8) for _, texts, rows in fake.calls)
    assert all(len(texts) <= rows for _, texts, rows in fake.calls)
    assert len(fake.calls) <= 5  # 20 + 2 predict rows -> 3 batches, 2 explain rows -> 1-2


def test_health_and_predict_are_503_until_ready():
    from fastapi.testclient import TestClient

    state = serve.ServerState(max_body_bytes=100)
    client = TestClient(serve.create_app(state))
    assert client.get("/health").status_code == 503
    assert client.get("/health").json() == {"status": "loading"}
    response = client.post("/predict", json={"input": "x"})
    assert response.status_code == 503 and "loading" in response.json()["error"]
    fake = FakePredictor()
    state.predictor, state.batcher = fake, serve.Batcher(fake, [8], 0.001)
    state.model, state.ready = "tiny", threading.Event()
    state.ready.set()
    try:
        assert client.get("/health").json() == {"status": "ok", "model": "tiny", "step": 0}
        assert client.post("/predict", json={"input": "x"}).json() == {"label": "predict:x"}
        too_big = client.post("/predict", json={"inputs": ["y" * 100]})
        assert too_big.status_code == 400 and "limit is 100" in too_big.json()["error"]
    finally:
        state.batcher.stop()


def test_serve_refuses_several_processes(monkeypatch, tmp_path):
    import jax

    from configs import generic

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UserError, match="single process, not 2"):
        serve.run_serve(generic.get_config("runlocal"), tmp_path, "127.0.0.1", 0)


# ---- the real server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 60):
    """(status, parsed JSON body) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, obj) -> tuple[int, dict]:
    return http("POST", url + "/predict", json.dumps(obj).encode())


SERVE_FIELDS = {
    "data.max_input_length": 48,
    "eval.gen_max_len": 8,
    "eval.rationale_max_len": 8,
    "eval.batch_size": 8,
    "serve.max_wait_ms": 20,
}


def serve_config(model_dir):
    from configs import generic

    c = generic.get_config("runlocal")
    c.model.from_pretrained = str(model_dir)
    for key, value in SERVE_FIELDS.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, Popen, /health statuses seen while starting, model dir, workdir)."""
    root = tmp_path_factory.mktemp("serve")
    model_dir = fixtures.write_random_t5(root, "v1.1")
    workdir = root / "wd"
    port = free_port()
    args = [
        "--config=configs/generic.py:runlocal", f"--workdir={workdir}", "--mode=serve",
        f"--port={port}", f"--config.model.from_pretrained={model_dir}",
        *(f"--config.{k}={v}" for k, v in SERVE_FIELDS.items()),
    ]  # fmt: skip
    env = launch_util.launch_env(4, **{launch_util.DECODE_DELAY_ENV: "0.2"})
    log = root / "server.log"
    proc = launch_util.subprocess.Popen(
        [launch_util.sys.executable, launch_util.__file__, *args],
        cwd=launch_util.ROOT, env=env, stdout=open(log, "w"),  # noqa: SIM115
        stderr=launch_util.subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    seen: list[int] = []

    def healthy() -> bool:
        try:
            status, _ = http("GET", url + "/health", timeout=5)
        except OSError:  # not listening yet
            return False
        seen.append(status)
        return status == 200

    try:
        launch_util.wait_for(healthy, timeout=600, procs=[proc], what="/health 200", poll=0.05)
    except AssertionError:
        proc.kill()
        raise AssertionError(log.read_text()[-4000:]) from None
    yield url, proc, seen, model_dir, workdir
    if proc.poll() is None:
        proc.kill()
        proc.wait()


slow = pytest.mark.slow


@slow
def test_server_is_503_until_ready(server):
    url, _, seen, _, _ = server
    assert seen[0] == 503 and seen[-1] == 200
    status, health = http("GET", url + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"]
    _, stats = http("GET", url + "/stats")
    assert stats["length_buckets"] == [32, 64] and stats["row_buckets"] == [4, 8]


@slow
def test_concurrent_requests_equal_predict_and_share_decodes(server, tmp_path):
    from distill_jax import modes

    url, _, _, model_dir, workdir = server
    inputs = [r["input"] for r in fixtures.generic_records(16, offset=200)]
    inputs[3] = "a much longer input that lands in the 64-token bucket, " * 3 + inputs[3]
    _, before = http("GET", url + "/stats")
    with concurrent.futures.ThreadPoolExecutor(len(inputs) + 1) as pool:
        singles = list(pool.map(lambda x: post(url, {"input": x}), inputs))
    batch_status, batch = post(url, {"inputs": inputs[:5], "rationale": True})
    _, after = http("GET", url + "/stats")
    assert all(status == 200 for status, _ in singles) and batch_status == 200

    config = serve_config(model_dir)
    config.eval.output_rationale = True
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"input": x}) + "\n" for x in inputs))
    modes.run_predict(config, workdir, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in rows]
    assert [answer["label"] for _, answer in singles] == labels
    assert batch == {"labels": labels[:5], "rationales": [r["rationale"] for r in rows[:5]]}
    # A model with real outputs: non-empty and not all the same.
    assert all(labels) and len(set(labels)) > len(labels) // 2

    # 16 concurrent single-input requests shared decode calls (at most 8 rows each); the
    # batch request decoded labels and rationales (2 calls). No shape was compiled on the way.
    decodes = after["decode_calls"] - before["decode_calls"]
    assert decodes - 2 < len(inputs) // 2, (before, after)
    assert after["requests"] - before["requests"] == len(inputs) + 1
    assert after["uncompiled_decodes"] == 0


@slow
def test_bad_requests_get_400_and_the_server_keeps_serving(server):
    url = server[0]
    bad = [
        b"not json", b"[1]", b"{}", b'{"input": 1}', b'{"inputs": []}', b'{"inputs": [1]}',
        json.dumps({"input": "x" * 1_000_001}).encode(),
    ]  # fmt: skip
    for body in bad:
        status, answer = http("POST", url + "/predict", body)
        assert status == 400 and answer["error"], (body[:40], answer)
    status, answer = post(url, {"input": "Patient 1: the doctor orders a lipase level."})
    assert status == 200 and isinstance(answer["label"], str)


@slow
def test_sigterm_finishes_in_flight_requests_and_exits_0(server):
    url, proc, *_ = server
    inputs = [r["input"] for r in fixtures.generic_records(24, offset=300)]  # 3 slow decodes
    _, before = http("GET", url + "/stats")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, url, {"inputs": inputs})
        launch_util.wait_for(
            lambda: http("GET", url + "/stats")[1]["requests"] > before["requests"],
            timeout=30,
            what="the request to arrive",
        )
        proc.send_signal(signal.SIGTERM)
        status, answer = pending.result(timeout=60)
    assert status == 200 and len(answer["labels"]) == len(inputs)
    assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):  # no longer listening
        http("GET", url + "/health", timeout=5)
