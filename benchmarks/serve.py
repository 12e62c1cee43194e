"""Throughput and latency of `launch.py --mode=serve` at several numbers of concurrent clients.

Builds a random-weights T5 of `--preset` (transformers' own init) with a SentencePiece
vocabulary trained on random words, starts the real server on it as a subprocess
(`train.model_type=standard`, inputs of 60-150 tokens, `eval.gen_max_len` decoded tokens; random
weights rarely emit EOS, so every request decodes the full length), and for each concurrency
keeps that many clients (threads, keep-alive HTTP) posting one `{"input": ...}` each, back to
back. Reports requests/s, p50/p99 latency and the server's decode calls. `--unbatched` also
times the same server with `eval.batch_size=1` (no dynamic batching) in the same run.

    python benchmarks/serve.py --preset t5-v1_1-small --clients 1,8,64 --unbatched
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="t5-v1_1-small")
    p.add_argument("--clients", default="1,8,64", help="comma-separated concurrencies")
    p.add_argument("--requests_per_client", type=int, default=2, help="timed, after 1 warm-up")
    p.add_argument("--batch_size", type=int, default=64, help="eval.batch_size of the server")
    p.add_argument("--max_len", type=int, default=64, help="eval.gen_max_len")
    p.add_argument("--input_len", default="60,150", help="min,max input tokens (with EOS)")
    p.add_argument("--unbatched", action="store_true", help="also time eval.batch_size=1")
    p.add_argument("--json", default="", help="write the results here too")
    return p.parse_args(argv)


WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2 + i % 7))
    for i in range(3000)
]


def build_model(preset: str, out: pathlib.Path) -> pathlib.Path:
    """A HF T5 directory of `preset` with random weights and a trained tokenizer."""
    import torch
    import transformers

    from distill_jax.model.config import config_to_hf, get_preset
    from distill_jax.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(2000)]
    tokenizer = Tokenizer.train(texts, 2000, out / "tokenizer")
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**config_to_hf(get_preset(preset)))
    )
    model.save_pretrained(out / "model")
    tokenizer.save(out / "model")
    return out / "model"


def make_inputs(model_dir: pathlib.Path, n: int, lo: int, hi: int) -> list[str]:
    """n texts of lo..hi tokens (EOS included) under the model's tokenizer."""
    from distill_jax.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)
    rng = random.Random(1)
    out = []
    for _ in range(n):
        target, words = rng.randint(lo, hi) - 1, []
        while len(tokenizer.encode(" ".join(words))) < target:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, workdir, args, batch_size: int, max_input_length: int):
    """(Popen, port) of a ready server; the start-up time is printed."""
    port = free_port()
    cmd = [
        sys.executable, str(ROOT / "launch.py"), "--config=configs/generic.py", "--mode=serve",
        f"--workdir={workdir}", f"--port={port}", f"--config.model.from_pretrained={model_dir}",
        "--config.train.model_type=standard", f"--config.eval.batch_size={batch_size}",
        f"--config.eval.gen_max_len={args.max_len}",
        f"--config.data.max_input_length={max_input_length}",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = open(pathlib.Path(workdir).with_suffix(".log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log.name}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    print(f"server (batch_size={batch_size}) ready in {time.time() - t0:.0f}s", flush=True)
    return proc, port


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def run_clients(port: int, inputs: list[str], clients: int, per_client: int) -> dict:
    """Each client posts `per_client` + 1 requests back to back; the first is not timed."""

    def client(k: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        latencies = []
        for i in range(per_client + 1):
            body = json.dumps({"input": inputs[(k * (per_client + 1) + i) % len(inputs)]})
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            if i:
                latencies.append(time.perf_counter() - t0)
        return latencies

    before = get(port, "/stats")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = sorted(x for xs in pool.map(client, range(clients)) for x in xs)
    wall = time.perf_counter() - t0
    after = get(port, "/stats")
    n = len(latencies)
    return {
        "clients": clients,
        "requests": n,
        # the warm-up requests overlap the timed ones, so count them all over the whole wall
        "requests_per_s": round(clients * (per_client + 1) / wall, 3),
        "p50_s": round(latencies[n // 2], 3),
        "p99_s": round(latencies[min(n - 1, int(0.99 * n))], 3),
        "decode_calls": after["decode_calls"] - before["decode_calls"],
        "uncompiled_decodes": after["uncompiled_decodes"],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from benchmarks import common

    lo, hi = common.parse_range(args.input_len)
    concurrencies = [int(c) for c in args.clients.split(",")]
    load = os.getloadavg()[0]
    results: dict = {"preset": args.preset, "machine": common.machine(), "load_avg_1m": load}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        model_dir = build_model(args.preset, tmp)
        inputs = make_inputs(model_dir, 256, lo, hi)
        sizes = [args.batch_size] + ([1] if args.unbatched else [])
        for batch_size in sizes:
            proc, port = start_server(model_dir, tmp / f"wd{batch_size}", args, batch_size, hi)
            try:
                rows = []
                for c in concurrencies:
                    row = run_clients(port, inputs, c, args.requests_per_client)
                    print(json.dumps({"batch_size": batch_size, **row}), flush=True)
                    rows.append(row)
                results[f"batch_size={batch_size}"] = rows
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    results["load_avg_1m_after"] = os.getloadavg()[0]
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
