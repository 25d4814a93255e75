"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol, answers
like a grounded teacher, and injects faults: 429 with Retry-After, 500, timeouts, dropped
connections, malformed JSON, huge replies (declared or chunked), and replies that reflect the
request's headers (as a careless proxy or a hostile server would). Used by the synth tests and
bench/synth.py."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "timeout", "drop", "malformed")


def _unit(text: str, salt: str) -> float:
    return int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "big") / 2**64


class FakeOpenAI:
    def __init__(self, latency: float = 0.0, fail_once: float = 0.0, fail_always: float = 0.0, faults=FAULTS,
                 timeout_sleep: float = 2.0, retry_after: str = "0.05", reject_response_format: bool = False,
                 hallucinate: float = 0.0, api_key: str | None = None, huge: float = 0.0, huge_bytes: int = 50 << 20,
                 chunked: bool = False, gzipped: bool = False, reflect_headers: bool = False):
        self.latency, self.fail_once, self.fail_always, self.faults = latency, fail_once, fail_always, tuple(faults)
        self.timeout_sleep, self.retry_after = timeout_sleep, retry_after
        self.reject_response_format, self.hallucinate, self.api_key = reject_response_format, hallucinate, api_key
        self.huge, self.huge_bytes, self.chunked, self.reflect_headers = huge, huge_bytes, chunked, reflect_headers
        self.gzipped = gzipped  # huge replies as a small gzip body that expands to huge_bytes
        self.huge_sent = 0  # bytes of huge replies actually written before the client hung up
        self.lock = threading.Lock()
        self.log: list[tuple[str, float, str]] = []  # (request id, time, outcome)
        self.attempts: dict[str, int] = {}
        self.auth_seen: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                outer.handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 resets connections under 32-way concurrency

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None  # dropped connections are the point, not news
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def fault_for(self, rid: str, attempt: int) -> str | None:
        if _unit(rid, "always") < self.fail_always:
            return self.faults[int(_unit(rid, "kind") * len(self.faults))]
        if attempt == 1 and _unit(rid, "once") < self.fail_once:
            return self.faults[int(_unit(rid, "kind") * len(self.faults))]
        return None

    def _send(self, h, code: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        rid = h.headers.get("X-Vlmtool-Request") or hashlib.sha256(raw).hexdigest()[:24]
        if h.headers.get("Authorization"):
            self.auth_seen.add(h.headers["Authorization"])
        with self.lock:
            attempt = self.attempts[rid] = self.attempts.get(rid, 0) + 1
        fault = self.fault_for(rid, attempt)
        with self.lock:
            self.log.append((rid, time.monotonic(), fault or "ok"))
        if self.latency:
            time.sleep(self.latency)
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, b'{"error": {"message": "bad key"}}')
        body = json.loads(raw)
        if self.reject_response_format and "response_format" in body:
            return self._send(h, 400, b'{"error": {"message": "response_format json_schema is not supported"}}')
        if fault == "429":
            return self._send(h, 429, b'{"error": {"message": "slow down"}}', {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(h, 500, b'{"error": {"message": "boom"}}')
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
            return self._send(h, 504, b"{}")
        if fault == "drop":
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)
            return
        if fault == "malformed":
            return self._send(h, 200, b'{"choices": [{"message": {"content": "{\\"turns\\": [')
        if _unit(rid, "huge") < self.huge:
            return self._send_huge(h)
        text = self.answer(body, rid)
        if self.reflect_headers:  # every request header, the credentials included, in the answer
            text = text.replace(".", ". Request headers: " + "; ".join(f"{k}={v}" for k, v in h.headers.items()) + ".", 1)
        resp = {"id": "chatcmpl-" + rid, "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(text) // 4, "total_tokens": len(raw) // 4 + len(text) // 4}}
        self._send(h, 200, json.dumps(resp).encode())

    def _send_huge(self, h) -> None:
        """A 200 whose body is huge_bytes of JSON-ish text, declared up front, chunked, or gzipped."""
        if self.gzipped:
            import gzip

            with self.lock:  # made once: about 50 KB that expand to huge_bytes
                if getattr(self, "_gz", None) is None:
                    self._gz = gzip.compress(b'{"choices": [{"message": {"content": "' + b"A" * self.huge_bytes, compresslevel=9)
            return self._send(h, 200, self._gz, {"Content-Encoding": "gzip"})
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if self.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(self.huge_bytes))
        h.end_headers()
        block = b'{"choices": [{"message": {"content": "' + b"A" * (1 << 16)
        try:
            left = self.huge_bytes
            while left > 0:
                part = block[: min(len(block), left)]
                h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if self.chunked else part)
                left -= len(part)
                with self.lock:
                    self.huge_sent += len(part)
            if self.chunked:
                h.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading: the point of the test
            h.close_connection = True

    def answer(self, body: dict, rid: str) -> str:
        """A grounded answer from the prompt's known objects (or a hallucinated one, on demand)."""
        user = body["messages"][-1]["content"]
        prompt = " ".join(part.get("text", "") for part in user if isinstance(part, dict)) if isinstance(user, list) else user
        q = re.search(r"Question: (.*\?)", prompt)
        objs = re.search(r"Known objects: (.*)", prompt)
        names = [re.sub(r" at \[.*?\]", "", o).strip() for o in objs.group(1).split(";")] if objs else []
        listing = ", ".join(f"a {n}" for n in names) or "some shapes"
        if q:
            absent = re.search(r"Is there an? (.*) in the image\?", q.group(1))
            turns = [{"question": q.group(1), "answer": f"No, there is no {absent.group(1) if absent else 'such object'} in the image."}]
        else:
            extra = " There is also a purple hexagon in the corner." if _unit(rid, "halluc") < self.hallucinate else ""
            if "conversation" in prompt:
                turns = [{"question": "What is in the image?", "answer": f"I can see {listing}.{extra}"},
                         {"question": "How many objects are there?", "answer": f"There {'is one object' if len(names) == 1 else f'are {len(names)} objects'}."}]
            elif "in detail" in prompt:
                turns = [{"question": "Describe the image in detail.", "answer": f"The image shows {listing} on a plain background.{extra}"}]
            else:
                turns = [{"question": "How many objects are there?", "answer": f"Counting each one in turn gives {len(names)}, namely {listing}.{extra}"}]
        return json.dumps({"turns": turns})
