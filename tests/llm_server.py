"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for the LLM client tests.

It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` the way the OpenAI API
does (same JSON shapes), so the tests talk to it through the real ``openai`` client. Each test
scripts it with a *policy*: a function from the request number and parsed body to an
:class:`Action` (a status and a body, raw bytes, or a delay first). The server counts the
requests it saw and the most it had in flight at once, and stops when its context ends.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclasses.dataclass
class Action:
    """What the server does with one request."""

    status: int = 200
    body: dict | None = None        # sent as JSON
    raw: bytes | None = None        # sent as is (for malformed answers)
    delay_s: float = 0.0            # sleep first (for timeouts and concurrency)


def echo_text(body: dict) -> str:
    """The text the default policy answers: ``echo:`` + the last user message or the prompt."""
    if "messages" in body:
        return "echo:" + body["messages"][-1]["content"]
    return "echo:" + body["prompt"]


def ok_body(body: dict, path: str, texts: list[str] | None = None) -> dict:
    """A well-formed OpenAI response for ``body``; usage counts characters as tokens."""
    n = int(body.get("n", 1))
    texts = texts if texts is not None else [f"{echo_text(body)}#{i}" if n > 1 else echo_text(body)
                                             for i in range(n)]
    prompt_tokens = len(json.dumps(body.get("messages", body.get("prompt"))))
    completion_tokens = sum(len(t) for t in texts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if path.endswith("/chat/completions"):
        choices = [{"index": i, "finish_reason": "stop", "logprobs": None,
                    "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]
        obj = "chat.completion"
    else:
        choices = [{"index": i, "finish_reason": "length", "logprobs": None, "text": t}
                   for i, t in enumerate(texts)]
        obj = "text_completion"
    return {"id": "x-1", "object": obj, "created": 0, "model": body.get("model", "?"),
            "choices": choices, "usage": usage}


Policy = Callable[[int, str, dict], Action]


def default_policy(i: int, path: str, body: dict) -> Action:
    return Action(body=ok_body(body, path))


class ScriptedServer:
    """``with ScriptedServer(policy) as s: ... s.base_url ...``; counts requests."""

    def __init__(self, policy: Policy = default_policy):
        self.policy = policy
        self.requests: list[tuple[str, dict]] = []   # (path, body) in arrival order
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # whether this handler thread is still counted
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        with self._lock:
            i = len(self.requests)
            self.requests.append((handler.path, body))
            self.auth_headers.append(handler.headers.get("Authorization"))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._local.counted = True
        try:
            if handler.path not in ("/v1/chat/completions", "/v1/completions"):
                action = Action(status=404, body={"error": {"message": "no such route"}})
            else:
                action = self.policy(i, handler.path, body)
            if action.delay_s:
                time.sleep(action.delay_s)
            payload = action.raw if action.raw is not None else json.dumps(action.body).encode()
            # leave the count before the answer goes out: once the client has it, it may send
            # its next request, which must not find this one still counted
            self._leave()
            handler.send_response(action.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Count this request as answered (once, however the handler ends)."""
        with self._lock:
            if getattr(self._local, "counted", False):
                self._local.counted = False
                self.in_flight -= 1

    def __enter__(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                server._handle(self)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
