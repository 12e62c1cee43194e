"""`--mode=serve`: the student over HTTP (FastAPI + uvicorn), with dynamic batching.

GET /health, GET /stats and POST /predict as README.md describes them, on the model of
`--mode=predict`. A batcher thread decodes the (text, task) units queued together in the
smallest row bucket that holds them (every decode shape is compiled at start-up). One process
only: a pod-sized model would need every host to join each decode (out of scope).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import pathlib
import queue
import signal
import threading
import time

import ml_collections
from absl import logging
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from distill_jax import config_check
from distill_jax.errors import UserError
from distill_jax.predictor import Predictor


class BadRequest(ValueError):
    """A request the server answers with 400 {"error": str(e)}."""


@dataclasses.dataclass
class _Job:
    """One request: its (task -> outputs) slots and the future its handler awaits."""

    outputs: dict[str, list[str | None]]
    remaining: int
    future: concurrent.futures.Future


class Batcher:
    """Decodes queued (text, task) units in batches on one background thread."""

    def __init__(self, predictor: Predictor, row_buckets: list[int], max_wait_s: float):
        self.predictor = predictor
        self.row_buckets = sorted(row_buckets)
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str], tasks: list[str]) -> concurrent.futures.Future:
        """A future of {task: outputs in the order of texts} for every task in `tasks`."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = _Job({t: [None] * len(texts) for t in tasks}, len(texts) * len(tasks), future)
        for task in tasks:
            for i, text in enumerate(texts):
                self._queue.put((job, task, i, text))
        return future

    def stop(self) -> None:
        """Finishes the units already queued, then ends the thread."""
        self._queue.put(None)
        self._thread.join()

    def _take(self) -> list:
        """The first unit blocks; more join for at most max_wait_s; a None (stop) ends it."""
        units = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while units[-1] is not None and len(units) < self.row_buckets[-1]:
            try:  # a timeout of 0 takes only what is already queued
                units.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return units

    def _run(self) -> None:
        while True:
            units = self._take()
            by_task: dict[str, list] = {}
            for unit in filter(None, units):  # a None is the stop, always last
                by_task.setdefault(unit[1], []).append(unit)
            for task, group in by_task.items():
                self._decode(task, group)
            if units[-1] is None:
                return

    def _decode(self, task: str, group: list) -> None:
        try:
            rows = next(r for r in self.row_buckets if r >= len(group))
            p = self.predictor
            texts = [text for _, _, _, text in group]
            outputs = p.generate(p.encode(texts, task), task, batch_size=rows)
        except BaseException as e:  # never kill the batcher: fail these requests instead
            logging.exception("decoding failed")
            for job, *_ in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        for (job, _, i, _), out in zip(group, outputs, strict=True):
            job.outputs[task][i] = out
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.outputs)


def parse_request(body: bytes, has_rationales: bool) -> tuple[list[str], bool, bool]:
    """(texts, single, rationale) of a /predict body; BadRequest says what is wrong."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"input", "inputs", "rationale"})
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; expected 'input' or 'inputs', 'rationale'")
    if ("input" in obj) == ("inputs" in obj):
        raise BadRequest("give exactly one of 'input' (a string) or 'inputs' (a list of strings)")
    rationale = obj.get("rationale", False)
    if not isinstance(rationale, bool):
        raise BadRequest(f"'rationale' must be true or false, got {rationale!r:.80}")
    if rationale and not has_rationales:
        raise BadRequest("'rationale': this model was trained without the explain: task")
    if "input" in obj:
        if not isinstance(obj["input"], str):
            raise BadRequest(f"'input' must be a string, got {obj['input']!r:.80}")
        return [obj["input"]], True, rationale
    texts = obj["inputs"]
    if not isinstance(texts, list) or not texts:
        raise BadRequest(f"'inputs' must be a non-empty list of strings, got {texts!r:.80}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"'inputs'[{i}] must be a string, got {text!r:.80}")
    return texts, False, rationale


@dataclasses.dataclass
class ServerState:
    """What the HTTP handlers read: set by the loader thread once the model is ready."""

    max_body_bytes: int
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    model: str = ""
    step: int = 0
    error: BaseException | None = None
    requests: int = 0
    inputs: int = 0
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or BadRequest when it is over `limit` bytes.

    The rest of an oversized body is read and dropped (up to 64 MiB) before the 400: clients that
    send the whole body first (urllib, requests) would otherwise see a broken pipe.
    """
    body = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > max(limit, 64 << 20):
            break
    if size > limit:
        declared = request.headers.get("content-length", "")
        what = f"{declared} bytes" if declared.isdigit() else "over the limit"
        raise BadRequest(f"the body is {what}; the limit is {limit} bytes")
    return bytes(body)


def create_app(state: ServerState):
    """The FastAPI app over `state`."""
    app = FastAPI(title="distill-jax student", docs_url=None, redoc_url=None)

    @app.get("/health")
    def health():
        if state.error is not None:
            return JSONResponse({"status": "error", "error": str(state.error)}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": state.model, "step": state.step}

    @app.get("/stats")
    def stats():
        p = state.predictor
        return {
            "ready": state.ready.is_set(),
            "requests": state.requests,
            "inputs": state.inputs,
            "decode_calls": p.decode_calls if p else 0,
            # decodes of a shape not compiled at start-up (each one compiled on a request's path)
            "uncompiled_decodes": p.new_shape_calls if p else 0,
            "row_buckets": state.batcher.row_buckets if state.batcher else [],
            "length_buckets": p.length_buckets() if p else [],
        }

    @app.post("/predict")
    async def predict(request: Request):
        if not state.ready.is_set():
            return JSONResponse({"error": "the model is still loading"}, status_code=503)
        try:
            body = await _read_body(request, state.max_body_bytes)
            texts, single, rationale = parse_request(body, state.predictor.has_rationales)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        state.requests += 1
        state.inputs += len(texts)
        p = state.predictor
        tasks = [p.label_task] + (["explain"] if rationale else [])
        try:
            outputs = await asyncio.wrap_future(state.batcher.submit(texts, tasks))
        except Exception as e:
            return JSONResponse({"error": f"decoding failed: {e}"}, status_code=500)
        names = {p.label_task: "label", "explain": "rationale"}  # outputs: in the order of tasks
        if single:
            return {names[task]: out[0] for task, out in outputs.items()}
        return {names[task] + "s": out for task, out in outputs.items()}

    return app


def load(state: ServerState, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Loads the model, compiles every decode shape, starts the batcher, then marks ready."""
    from distill_jax import modes

    s = config.serve
    p, step = modes.load_predictor(config, workdir)
    rows = p.row_buckets(s.row_buckets)
    tasks = [p.label_task] + (["explain"] if p.has_rationales else [])
    t0 = time.time()
    n = p.warm_up(rows, tasks)
    logging.info("compiled %d decode shapes in %.1fs", n, time.time() - t0)
    state.model = config.model.from_pretrained or config.model.preset
    state.step = step
    state.predictor = p
    state.batcher = Batcher(p, rows, s.max_wait_ms / 1000)
    state.ready.set()
    print(f"ready: {state.model} (step {step}), {n} decode shapes compiled", flush=True)


def run_serve(config: ml_collections.ConfigDict, workdir: pathlib.Path, host: str, port: int):
    """Serves until SIGTERM/SIGINT; the HTTP port answers (503) while the model loads."""
    import jax
    import uvicorn

    if jax.process_count() > 1:
        raise UserError(
            f"--mode=serve runs in a single process, not {jax.process_count()}: start it "
            "without --coordinator_address/--num_processes (one host serves the model)."
        )
    config_check.validate_serve(config.serve)
    state = ServerState(max_body_bytes=config.serve.max_body_bytes)
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host=host, port=port, access_log=False, log_level="info")
    )

    def loader():
        try:
            load(state, config, workdir)
        except BaseException as e:
            state.error = e
            server.should_exit = True  # the error is raised below, after uvicorn stops

    threading.Thread(target=loader, name="loader", daemon=True).start()
    print(f"serving on http://{host}:{port} (503 on /health until the model is ready)", flush=True)
    # uvicorn re-raises the signal it shut down on after its graceful shutdown; a no-op handler
    # underneath it makes that a normal return, so SIGTERM ends in exit 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state.batcher is not None:
        state.batcher.stop()
    if state.error is not None:
        raise state.error
    if not server.started:
        raise UserError(f"--host={host} --port={port}: could not listen there (see above)")
