"""A scripted OpenAI-compatible teacher on 127.0.0.1, for tests and benchmarks.

`TeacherServer(...)` starts a stdlib ThreadingHTTPServer (HTTP/1.1 keep-alive) on a free port
in a daemon thread; `.url` is its `/v1` base URL and `.stop()` shuts it down. It serves
`POST /v1/chat/completions` and `POST /v1/completions` and answers each prompt's query (the
text after the prompt's last "Q: ") in the paper's form "<reasoning> So the answer is <x>.",
where x comes from an `[ans=x]` tag in the query. Other tags script misbehaviour:

    [429xN]   the first N requests for this query get 429 with `Retry-After: 0.01`
    [500xN]   the first N requests get 500
    [slow=S]  every answer waits S seconds
    [garbage] the answer has no "So the answer is"
    [wrong]   the answer names the label "wrong"
    [vote=a,b,c]  the k-th request for this query answers the k-th label (cyclic)
    [fail]    every request gets 500 (the retries run out)
    [bad400]  every request gets 400 with a message
    [echo]    400 with a message that quotes the request's headers (the API key too)

`key` set: a request without `Authorization: Bearer <key>` gets 401. `delay` slows every
answer. Everything received is logged in `.requests` (path, query, headers).

Run as a script (`python tests/teacher_server.py PORT`) it serves instantly-answering requests
in its own process until killed (the benchmark's server).
"""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_TAG = re.compile(r"\[([a-z0-9]+?)(?:=([^\]]*)|x(\d+))?\]")


def query_of(prompt: str) -> str:
    """The record's text in a rendered prompt: after the last 'Q: ', before its 'A:'."""
    return prompt.rsplit("Q: ", 1)[-1].rsplit("\nA:", 1)[0]


class TeacherServer:
    """The scripted server; see the module docstring."""

    def __init__(self, key: str | None = None, delay: float = 0.0, port: int = 0):
        self.key = key
        self.delay = delay
        self.requests: list[dict] = []
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, headers, payload = server.respond(self.path, body, dict(self.headers))
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def queries(self) -> list[str]:
        """The query of every request received, in order."""
        return [r["query"] for r in self.requests]

    def respond(self, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) for one request."""
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        query = query_of(prompt)
        with self._lock:
            n = self.counts[query]
            self.counts[query] += 1
            self.requests.append({"path": path, "query": query, "headers": headers})
        if self.key is not None and headers.get("Authorization") != f"Bearer {self.key}":
            return 401, {}, {"error": {"message": "Incorrect API key provided", "code": 401}}
        tags = {m.group(1): m.group(2) or m.group(3) or "" for m in _TAG.finditer(query)}
        if "429" in tags and n < int(tags["429"]):
            return 429, {"Retry-After": "0.01"}, {"error": {"message": "rate limited"}}
        if "500" in tags and n < int(tags["500"]) or "fail" in tags:
            return 500, {}, {"error": {"message": "internal error"}}
        if "echo" in tags:  # a careless server quoting the request's credentials back
            return 400, {}, {"error": {"message": f"bad request with {headers}"}}
        if "bad400" in tags:
            return 400, {}, {"error": {"message": "prompt is too long for this model"}}
        delay = float(tags.get("slow") or 0) + self.delay
        if delay:
            time.sleep(delay)
        label = tags.get("ans", "unknown")
        if "vote" in tags:
            votes = tags["vote"].split(",")
            label = votes[n % len(votes)]
        if "wrong" in tags:
            label = "wrong"
        text = f" The question asks for {label}, so {label} it is. So the answer is {label}."
        if "garbage" in tags:
            text = " I am not sure what to say here."
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        return 200, {}, {"choices": [{"index": 0, **choice}], "usage": usage}


if __name__ == "__main__":
    s = TeacherServer(port=int(sys.argv[1]))
    print(s.url, flush=True)
    s._thread.join()
