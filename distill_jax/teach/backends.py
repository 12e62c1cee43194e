"""Where answers come from: an OpenAI-compatible HTTP server, or a local transformers model.

Both call `on_answer(Answer)` in the caller's thread as each answer arrives, so it is cached at
once. HTTP retries 429, 5xx, timeouts and connection errors (README.md), not other 4xx. The first
request goes alone: if nothing answers there the run stops after its retries, and 401, 403, 404
and 405 (wrong key, URL or model) stop it at once, so a wrong key costs one request, not
`concurrency` doomed ones. The API key is sent only in the Authorization header, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import logging as std_logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from distill_jax.errors import UserError
from distill_jax.teach.prompts import STOP

# 4xx answers that will not change for another input: the run stops at once.
FATAL_STATUS = frozenset({401, 403, 404, 405})
POOL_SIZE = 8  # connections per httpx client
ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}  # under base_url


@dataclasses.dataclass(frozen=True)
class Request:
    """One answer to get: its cache key and the rendered prompt."""

    key: str
    prompt: str


@dataclasses.dataclass(frozen=True)
class Answer:
    """The teacher's text for `key`, or `error` ('<status> <server message>') if none came."""

    key: str
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


def request_body(t: Any, prompt: str) -> dict[str, Any]:
    """The JSON body of a /chat/completions or /completions request (also for batch files)."""
    body: dict[str, Any] = {"model": t.model}
    if t.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body.update(temperature=float(t.temperature), max_tokens=int(t.max_tokens), stop=STOP)
    return body


def completion_answer(key: str, api: str, body: Any) -> Answer:
    """The Answer (text and token counts) in a completion response; ValueError if the body is
    not one."""
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a {api} completion: {str(body)[:200]}") from None
    usage = body.get("usage") or {}
    tokens = [int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")]
    return Answer(key, text or "", *tokens)


def server_message(resp: httpx.Response) -> str:
    """'<status> <the server's error message>' for an error response."""
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") or err.get("detail") or err if isinstance(err, dict) else err
    except ValueError:
        msg = resp.text
    msg = " ".join(str(msg).split())[:300] or resp.reason_phrase
    return f"{resp.status_code} {msg}"


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (Retry-After: seconds or an HTTP date), or None."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


_TRANSPORT = "no HTTP answer: "  # prefix of errors below HTTP (refused, reset, timed out)


class _Fatal(Exception):
    """A 4xx that no retry or other input will fix."""


class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, llama.cpp, hosted APIs)."""

    def __init__(self, t: Any, api_key: str | None):
        self.t = t
        self.url = str(t.base_url).rstrip("/") + ENDPOINTS[t.api]
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._key = api_key
        self.attempts = 0  # HTTP requests sent, retries included
        std_logging.getLogger("httpx").setLevel(std_logging.WARNING)  # no per-request lines

    def _delay(self, attempt: int) -> float:
        base = min(float(self.t.backoff_max_s), float(self.t.backoff_s) * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter"

    async def _one(self, client: httpx.AsyncClient, req: Request) -> Answer:
        body = request_body(self.t, req.prompt)
        last, delay = "", 0.0
        for attempt in range(int(self.t.max_retries) + 1):
            if attempt:
                await asyncio.sleep(delay)
            self.attempts += 1
            try:
                resp = await client.post(self.url, json=body)
            except httpx.TransportError as e:  # timeouts, refused connections, resets
                last = f"{_TRANSPORT}{type(e).__name__}: {e}".rstrip(": ")
                delay = self._delay(attempt)
                continue
            if resp.status_code == 200:
                try:
                    return completion_answer(req.key, self.t.api, resp.json())
                except ValueError as e:
                    return Answer(req.key, None, error=f"200 {e}")
            last = server_message(resp)
            if self._key:  # a server may echo what it was sent: never pass the key on
                last = last.replace(self._key, "***")
            if resp.status_code == 429 or resp.status_code >= 500:
                wait = retry_after(resp)
                delay = self._delay(attempt) if wait is None else wait
                continue
            if resp.status_code in FATAL_STATUS:  # wrong key, URL or model: stop now
                raise _Fatal(last)
            return Answer(req.key, None, error=last)  # e.g. 400: this prompt is too long
        return Answer(req.key, None, error=last)

    async def _run(self, requests: Sequence[Request], on_answer: Callable[[Answer], None]):
        conc = int(self.t.concurrency)
        # httpx's pool does work per request that grows with its connection count: several
        # small pools keep concurrency 32 as cheap per request as 8 (BENCHMARKS.md).
        limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
        options = dict(headers=self._headers, limits=limits, timeout=float(self.t.timeout_s))
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(**options))
                for _ in range(0, conc, POOL_SIZE)  # worker k uses clients[k // POOL_SIZE]
            ]
            first = await self._one(clients[0], requests[0])  # alone: a wrong key costs one
            if first.error and first.error.startswith(_TRANSPORT):
                raise _Fatal(first.error)  # nothing answers at that address
            on_answer(first)
            pending = iter(requests[1:])

            async def worker(client: httpx.AsyncClient):
                for req in pending:  # one shared iterator: each request taken once
                    on_answer(await self._one(client, req))

            async with asyncio.TaskGroup() as group:  # a _Fatal cancels the other workers
                for k in range(conc):
                    group.create_task(worker(clients[k // POOL_SIZE]))

    def run(self, requests: Sequence[Request], on_answer: Callable[[Answer], None]) -> None:
        """Gets every request's answer; a UserError naming the URL and the last error when the
        server cannot be used at all."""
        if not requests:
            return
        try:
            asyncio.run(self._run(requests, on_answer))
        except* _Fatal as group:
            msg = str(group.exceptions[0])
            raise UserError(
                f"teacher at {self.url} gave no usable answer ({self.attempts} request(s) "
                f"sent): last error: {msg}"
            ) from None


class HFBackend:
    """A local transformers causal LM (offline), generating `concurrency` prompts per batch."""

    def __init__(self, t: Any):
        import torch
        import transformers

        self.t = t
        kwargs = dict(local_files_only=True, trust_remote_code=False)
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(t.model, **kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(t.model, **kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"config field teacher.model={t.model!r}: cannot load a local causal LM: {first}"
            ) from None
        self.tok.padding_side = "left"  # generation continues the prompt's last token
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.attempts = 0

    def _text(self, prompt: str) -> str:
        if self.t.api != "chat" or not getattr(self.tok, "chat_template", None):
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def run(self, requests: Sequence[Request], on_answer: Callable[[Answer], None]) -> None:
        """Generates every request's answer, one batch of `concurrency` prompts at a time."""
        import torch

        size = int(self.t.concurrency)
        sample = float(self.t.temperature) > 0
        for start in range(0, len(requests), size):
            batch = requests[start : start + size]
            enc = self.tok([self._text(r.prompt) for r in batch], return_tensors="pt", padding=True)
            enc = enc.to(self.device)
            torch.manual_seed(int(batch[0].key[:8], 16))  # the same batch samples the same
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=int(self.t.max_tokens),
                    do_sample=sample,
                    temperature=float(self.t.temperature) if sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tok.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]  # [batch, new tokens]
            self.attempts += len(batch)
            for i, req in enumerate(batch):
                ids = new[i].tolist()
                if self.tok.eos_token_id in ids:
                    ids = ids[: ids.index(self.tok.eos_token_id)]
                text = self.tok.decode(ids, skip_special_tokens=True).split(STOP[0])[0]
                on_answer(Answer(req.key, text, int(enc["attention_mask"][i].sum()), len(ids)))
