"""A local OpenAI-compatible server (the shape vLLM / llama.cpp / Ollama serve) for end-to-end backend tests.

Serves `GET /v1/models` and `POST /v1/chat/completions` (JSON, or SSE when `stream: true`) on 127.0.0.1 in a
background thread. Replies are scripted (`ScriptedReply`: late or hung, failing, dropped, cut short, stalled
mid-reply), and every request (path, headers, body; GETs too) is recorded so tests can assert what the real
`openai` client sent over HTTP. A reply whose client hangs up before the end is counted in `disconnects`.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedReply:
    content: str | None = None
    reasoning: str | None = None
    reasoning_field: str = "reasoning"  # vLLM now: "reasoning"; older vLLM / llama.cpp: "reasoning_content"
    finish_reason: str = "stop"
    delay_s: float = 0.0
    hold: threading.Event | None = None  # answer only once this is set (hung until the test lets it go)
    status: int = 200
    chunk_size: int = 7  # characters per streamed delta
    chunk_delay_s: float = 0.0  # pause before each streamed chunk (a slow model)
    raw: str | None = None  # sent verbatim as the body (with `status`): a reply that is not a completion
    cut_short: bool = False  # a stream that ends mid-answer (no finish_reason, no [DONE])
    drop: bool = False  # close the connection without answering (a server restarting)
    # Stuck mid-reply for `stall_s`, the connection open: a stream after this many chunks, a completion after
    # its headers. Silent, or with a keep-alive every `heartbeat_s` (an SSE comment; a space before the JSON),
    # so that no read waits long. A client that hangs up meanwhile is seen at once.
    stall_after: int | None = None
    stall_s: float = 30.0
    heartbeat_s: float | None = None


@dataclass
class FakeOpenAIServer:
    models: list[str] = field(default_factory=lambda: ["bio-gpt-oss-20b"])
    replies: deque[ScriptedReply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0  # streams the client closed before they ended
    completed_streams: int = 0
    port: int = 0  # 0: any free port
    _server: ThreadingHTTPServer | None = None

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        return [request for request in self.requests if request["path"].rstrip("/") == path]

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: ScriptedReply) -> None:
        self.replies.extend(replies)

    def start(self) -> FakeOpenAIServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(fake: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            fake.requests.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": None}
            )
            if self.path.rstrip("/") != "/v1/models":
                self._json(404, {"error": {"message": "not found"}})
                return
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in fake.models]
            self._json(200, {"object": "list", "data": data})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            fake.requests.append(
                {
                    "path": self.path,
                    "headers": {key.lower(): value for key, value in self.headers.items()},
                    "body": body,
                }
            )
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._json(404, {"error": {"message": "not found"}})
                return
            reply = fake.replies.popleft() if fake.replies else ScriptedReply(content="(no scripted reply)")
            time.sleep(reply.delay_s)
            if reply.hold is not None:
                reply.hold.wait()
            if reply.drop:
                self.close_connection = True
                return
            if reply.raw is not None:
                self._raw(reply.status, reply.raw.encode())
            elif reply.status != 200:
                self._json(reply.status, {"error": {"message": "scripted failure", "type": "server_error"}})
            elif body.get("stream"):
                self._stream(body, reply)
            elif reply.stall_after is not None:
                self._stalled_completion(body, reply)
            else:
                self._json(200, _completion(body, reply))

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._raw(status, json.dumps(payload).encode())

        def _raw(self, status: int, data: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped waiting (its timeout)
                self.close_connection = True

        def _stream(self, body: dict[str, Any], reply: ScriptedReply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                chunks = _chunks(body, reply)
                for number, chunk in enumerate(chunks[: len(chunks) // 2] if reply.cut_short else chunks):
                    if number == reply.stall_after and self._stall(reply, b": keep-alive\n\n"):
                        return
                    time.sleep(reply.chunk_delay_s)
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                if reply.cut_short:
                    return
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client closed the stream
                fake.disconnects += 1
                return
            fake.completed_streams += 1

        def _stalled_completion(self, body: dict[str, Any], reply: ScriptedReply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")  # no length: the heartbeats' is not known yet
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.flush()
                if not self._stall(reply, b" "):
                    self.wfile.write(json.dumps(_completion(body, reply)).encode())
            except (BrokenPipeError, ConnectionResetError):  # the client closed the connection
                fake.disconnects += 1

        def _stall(self, reply: ScriptedReply, heartbeat: bytes) -> bool:
            """Stuck for `reply.stall_s` (sending `heartbeat` every `reply.heartbeat_s`), or until the client
            hangs up (counted: True). The client sends nothing while it waits for the reply, so the socket
            turns readable only when it is closed."""
            end = time.monotonic() + reply.stall_s
            while (left := end - time.monotonic()) > 0:
                wait = min(left, reply.heartbeat_s or left)
                if select.select([self.connection], [], [], wait)[0]:
                    try:
                        closed = self.connection.recv(1024) == b""
                    except ConnectionResetError:
                        closed = True
                    if closed:
                        fake.disconnects += 1
                        return True
                elif reply.heartbeat_s is not None:
                    self.wfile.write(heartbeat)
                    self.wfile.flush()
            return False

    return Handler


def _completion(body: dict[str, Any], reply: ScriptedReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning is not None:
        message[reply.reasoning_field] = reply.reasoning
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunks(body: dict[str, Any], reply: ScriptedReply) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    size = reply.chunk_size
    out = [chunk({"role": "assistant", "content": ""})]
    for text, key in ((reply.reasoning, reply.reasoning_field), (reply.content, "content")):
        out += [chunk({key: text[i : i + size]}) for i in range(0, len(text or ""), size)]
    out.append(chunk({}, reply.finish_reason))
    return out
