"""The teacher client's throughput, and the cost of a rerun that finds every answer cached.

    PYTHONPATH=. python benchmarks/teacher_client.py [--requests 2000] [--cache_answers 10000]

A local OpenAI-compatible server that answers at once runs in its own process on 127.0.0.1:
by default a minimal asyncio HTTP/1.1 keep-alive server with a canned completion
(`--server threading`: the tests' scripted ThreadingHTTPServer). Measured in one
run, side by side:

1. `OpenAIBackend.run` (httpx.AsyncClient pools of 8 connections) at concurrency 1, 8 and 32:
   requests/s and the client's CPU time per request; and at 32 with one pool of 32 connections
   (httpx's pool does per-request work that grows with its size);
2. the whole `--mode=teach` path (prompts, cache writes, parsing, OUT) at concurrency 32;
3. a rerun over `--cache_answers` inputs whose answers are all in the cache (no request is
   sent), against the same inputs asked of the server afresh at concurrency 32.

The server shares the machine's cores with the client, so on a 2-core box the figures are a
floor for the client alone. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import generic  # noqa: E402
from distill_jax.teach import backends, cache  # noqa: E402
from distill_jax.teach import run as teach  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ANSWER = json.dumps(
    {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " The order names "
                     "tsh. So the answer is tsh."}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 12},
    }
).encode()  # fmt: skip


async def _serve_asyncio(port: int) -> None:
    """A minimal HTTP/1.1 keep-alive server on asyncio streams: the same canned completion
    for every POST (one event loop, so 32 connections cost no threads)."""
    import asyncio

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(_ANSWER)).encode()
        + b"\r\n\r\n"
    )

    async def handle(reader, writer):
        while True:
            try:
                header = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = 0
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(head + _ANSWER)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await server.serve_forever()


def start_server(kind: str) -> tuple[subprocess.Popen, str]:
    """A server in its own process ('threading': tests/teacher_server.py; 'asyncio': the
    minimal one above); returns (process, base URL)."""
    port = _free_port()
    script = ROOT / "tests" / "teacher_server.py" if kind == "threading" else __file__
    proc = subprocess.Popen(
        [sys.executable, str(script), *(["--serve"] if kind == "asyncio" else []), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    url = proc.stdout.readline().strip()
    return proc, url


def teacher_config(url: str, concurrency: int):
    c = generic.get_config()
    c.logging.progress_bar = False
    c.teacher.base_url, c.teacher.model, c.teacher.concurrency = url, "bench", concurrency
    return c


def records(n: int, tag: str) -> list[dict]:
    return [{"input": f"Patient {k} {tag} [ans=tsh]", "label": "tsh"} for k in range(n)]


def write(path: pathlib.Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def bench_backend(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, client CPU ms per request) of the bare HTTP client."""
    t = teacher_config(url, concurrency).teacher
    reqs = [
        backends.Request(f"k{i}", f"Q: bench {concurrency} {i} [ans=tsh]\nA:") for i in range(n)
    ]
    got = []
    start, cpu = time.perf_counter(), time.process_time()
    backends.OpenAIBackend(t, None).run(reqs, got.append)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert len(got) == n and all(a.text for a in got)
    return n / seconds, 1000 * cpu / n


def bench_teach(url: str, tmp: pathlib.Path, rows: list[dict], name: str, conc: int = 32):
    """(seconds, summary) of one --mode=teach run over `rows` in workdir tmp/name."""
    src = write(tmp / f"{name}.jsonl", rows)
    start = time.perf_counter()
    s = teach.run_teach(teacher_config(url, conc), tmp / name, src, str(tmp / f"{name}.out"))
    return time.perf_counter() - start, s


def fill_cache(tmp: pathlib.Path, rows: list[dict], name: str) -> None:
    """Writes a cached answer for every row into workdir tmp/name (outside any timing)."""
    c = teacher_config("http://unused/v1", 32)
    recs = [teach.Record(r["input"], r["label"]) for r in rows]
    keys, _ = teach._plan(c, recs)
    store = cache.AnswerCache(tmp / name / "teacher" / "cache.jsonl")
    for row in keys:
        store.put(row[0], " The order names tsh. So the answer is tsh.", 300, 12)
    store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--cache_answers", type=int, default=10000)
    p.add_argument("--server", default="asyncio", choices=("asyncio", "threading"))
    args = p.parse_args()
    proc, url = start_server(args.server)
    rows_out = []
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = pathlib.Path(d)
            bench_backend(url, 64, 8)  # warm-up: imports, first connections
            for conc in (1, 8, 32):
                n = args.requests if conc > 1 else max(200, args.requests // 10)
                rate, cpu_ms = bench_backend(url, n, conc)
                rows_out.append(
                    (f"HTTP client, concurrency {conc}",
                     f"{rate:.0f} req/s (client CPU {cpu_ms:.2f} ms/req)", n)
                )  # fmt: skip
            pool, backends.POOL_SIZE = backends.POOL_SIZE, 32  # the alternative: one pool
            rate, cpu_ms = bench_backend(url, args.requests, 32)
            backends.POOL_SIZE = pool
            rows_out.append(
                ("HTTP client, concurrency 32, one httpx pool of 32 (not ours)",
                 f"{rate:.0f} req/s (client CPU {cpu_ms:.2f} ms/req)", args.requests)
            )  # fmt: skip
            secs, s = bench_teach(url, tmp, records(args.requests, "full"), "full")
            rows_out.append(
                ("--mode=teach end to end, concurrency 32", f"{args.requests / secs:.0f} req/s",
                 s["requests"]["sent"])
            )  # fmt: skip
            n = args.cache_answers
            fill_cache(tmp, records(n, "cached"), "cached")
            secs, s = bench_teach(url, tmp, records(n, "cached"), "cached")
            assert s["requests"]["sent"] == 0 and s["kept"] == n
            rows_out.append((f"rerun, {n} answers all cached", f"{secs:.2f} s", 0))
            secs, s = bench_teach(url, tmp, records(n, "fresh"), "fresh")
            assert s["requests"]["sent"] == n
            rows_out.append((f"same {n} inputs asked afresh, concurrency 32", f"{secs:.2f} s", n))
    finally:
        proc.kill()
        proc.wait()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"server: {args.server}\n"
    )
    print("| what | result | requests sent |\n|---|---|---|")
    for what, result, sent in rows_out:
        print(f"| {what} | {result} | {sent} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        import asyncio

        asyncio.run(_serve_asyncio(int(sys.argv[2])))
    else:
        main()
