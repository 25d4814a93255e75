"""Teachers behind one small interface: `await teacher.generate(request) -> Result`.

- captions: offline, writes pairs from the caption and the object metadata, the way the first
  LLaVA data was made from captions and boxes (deterministic; the default for tests and demo).
- openai: any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, llama.cpp,
  LiteLLM, hosted APIs) over httpx: images as base64 data URLs, a concurrency limit, a
  per-request timeout, retries with exponential backoff and full jitter on 429, 5xx, timeouts
  and dropped connections (Retry-After honoured), optional rate limits (requests/s,
  tokens/min), structured output through response_format where the server takes it and a
  tolerant parser where it does not. The API key comes from an environment variable and is
  never logged or written.
- local:DIR: a checkpoint `vlmtool train` wrote, answering requests in batches (vlm/infer.py's
  Answerer; torch is imported only when it is made).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from vlmtool.synth.objects import object_name
from vlmtool.synth.tasks import Request, article, presence_probes, probe_question

TURNS_SCHEMA = {
    "type": "object",
    "properties": {"turns": {"type": "array", "minItems": 1, "items": {
        "type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"], "additionalProperties": False}}},
    "required": ["turns"], "additionalProperties": False,
}
MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp"}
DEFAULT_QUESTION = {"detail": "Describe the image in detail.", "reasoning": "What can you infer from this image?"}


@dataclass
class Result:
    turns: list[dict] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failed: str | None = None  # the last error's reason when every attempt failed
    errors: list[str] = field(default_factory=list)  # reasons of the attempts that failed
    unparsable: str | None = None
    detail: str | None = None  # what went wrong, when a teacher raised


# ---------------------------------------------------------------------------------- parsing


def parse_turns(content: str, task: str, question: str | None = None) -> list[dict] | None:
    """Turns from a reply: strict JSON, JSON in a code fence or inside prose, or (for one-turn
    tasks) the plain text as the answer."""
    text = (content or "").strip()
    candidates = [text]
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        candidates.append(fence.group(1).strip())
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for c in candidates:
        try:
            obj = orjson.loads(c)
        except orjson.JSONDecodeError:
            continue
        turns = _turns_from(obj, question or DEFAULT_QUESTION.get(task))
        if turns is not None:
            return turns
    if task in ("detail", "negative", "reasoning") and text and not text.startswith(("{", "[")):
        return [{"question": question or DEFAULT_QUESTION.get(task, "Describe the image."), "answer": text}]
    return None


def _turns_from(obj, default_q: str | None) -> list[dict] | None:
    if isinstance(obj, dict) and isinstance(obj.get("turns"), list):
        obj = obj["turns"]
    if isinstance(obj, dict) and "answer" in obj:
        obj = [obj]
    if isinstance(obj, list) and obj and all(isinstance(t, dict) and "answer" in t for t in obj):
        return [{"question": str(t.get("question") or default_q or ""), "answer": str(t["answer"])} for t in obj]
    return None


# ---------------------------------------------------------------------------------- captions teacher


def _centre(o: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = o["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _region(o: dict, w: int, h: int) -> str:
    cx, cy = _centre(o)
    cx, cy = cx / max(w, 1), cy / max(h, 1)
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    hz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "in the centre" if (v, hz) == ("middle", "centre") else f"in the {v} {hz}" if v != "middle" else f"on the {hz}"


def _rel(a: dict, b: dict) -> str:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."


def presence_answers(teacher, req: Request) -> list[tuple[str, bool]]:
    """The (object, answer is yes) presence questions a request's pair will hold, as far as the
    job knows before sending it: all of the captions teacher's, another teacher's negative."""
    if hasattr(teacher, "presence"):
        return teacher.presence(req)
    return [(req.absent, False)] if req.task == "negative" and req.absent else []


class CaptionsTeacher:
    """Pairs written from the caption and the ground-truth objects (no model, no network).
    It reads only the request's checked objects (labels, colours, four-number boxes) and the
    image's own size, so no metadata can make it fail."""

    name = "captions"
    # Every conversation it writes holds balanced presence probes (POPE's yes and no, up to 3
    # each): the job gives conversation requests absent objects too (`absents`).
    balances_probes = True

    def __init__(self, model: str = "captions-v1"):
        self.model = model

    async def generate(self, req: Request) -> Result:
        return Result(turns=self.turns(req), finish_reason="stop")

    @staticmethod
    def presence(req: Request) -> list[tuple[str, bool]]:
        """The (object, answer is yes) presence questions `turns(req)` asks: what it writes and
        what --balance counts come from here."""
        labels = [o["label"] for o in CaptionsTeacher._asked_order(req)]
        if req.task == "negative":
            return [(req.absent, False), *((label, True) for label in labels[:1])]
        if not labels or req.task not in ("probes", "conversation"):
            return []
        return presence_probes(labels, req.absents or ((req.absent,) if req.absent else ()),
                               first=req.task == "probes" or bool(req.present_order))

    @staticmethod
    def _asked_order(req: Request) -> list[dict]:
        """The objects with boxes, in the order the job chose to ask about them (--balance), or their own."""
        objs = [o for o in req.objects or [] if o["bbox"] is not None]
        if not req.present_order:
            return objs
        rank = {label: i for i, label in enumerate(req.present_order)}
        return sorted(objs, key=lambda o: rank.get(o["label"], len(rank)))

    def turns(self, req: Request) -> list[dict]:
        objs = [o for o in req.objects or [] if o["bbox"] is not None]
        caption = (req.caption or "").strip()
        names = [object_name(o) for o in objs]
        listing = ", ".join(article(n) for n in names[:-1]) + (f" and {article(names[-1])}" if len(names) > 1 else article(names[0])) if names else ""
        if req.task == "negative":
            shows = f" The image shows {listing}." if listing else (f" It shows: {caption}" if caption else "")
            turns = [{"question": req.question, "answer": f"No, there is no {req.absent} in the image.{shows}"}]
            if objs:  # and the yes that balances it (worded apart from the conversation's yes, which may ask the same)
                yes = self._asked_order(req)[0]
                turns.append({"question": f"Is there {article(yes['label'])} in the image?",
                              "answer": f"Yes, the image does show {article(object_name(yes))}."})
            return turns
        if not objs:  # no boxes: stay with what the caption says
            question = "Describe the image in detail." if req.task == "detail" else "What does the image show?"
            return [{"question": question, "answer": _sentence(caption)}]
        if req.task == "probes":
            return self.short_probes(self.presence(req))
        if req.task == "conversation":
            return self._conversation(objs, names, listing, self.presence(req))
        if req.task == "detail":
            return self._detail(objs, names, listing, req.width, req.height)
        return self._reasoning(objs, names)

    @staticmethod
    def probes(asked: list[tuple[str, bool]]) -> list[dict]:
        """The conversation's presence probes (`presence`), answered from the truth."""
        return [{"question": probe_question(label),
                 "answer": f"Yes, there is {article(label)} in the image." if yes else f"No, there is no {label} in the image."}
                for label, yes in asked]

    @staticmethod
    def short_probes(asked: list[tuple[str, bool]]) -> list[dict]:
        """The probes task: other objects than the conversation's, answered in a word, as
        LLaVA-1.5's short-answer data does (and POPE's parser reads)."""
        return [{"question": probe_question(label), "answer": "Yes." if yes else "No."}
                for label, yes in asked]

    @staticmethod
    def _conversation(objs: list[dict], names: list[str], listing: str, asked: list[tuple[str, bool]]) -> list[dict]:
        n = len(objs)
        turns = CaptionsTeacher.probes(asked)
        turns.append({"question": "What objects can you see in the image?", "answer": f"I can see {n} object{'s' if n > 1 else ''}: {listing}."})
        if n > 1:
            turns.append({"question": f"Where is the {names[0]} relative to the {names[1]}?",
                          "answer": f"The {names[0]} is {_rel(objs[0], objs[1])} the {names[1]}."})
        turns.append({"question": f"What colour is the {objs[0]['label']}?", "answer": f"It is {objs[0]['color'] or 'not a single colour'}."})
        return turns

    @staticmethod
    def _detail(objs: list[dict], names: list[str], listing: str, w: int, h: int) -> list[dict]:
        parts = [f"The image shows {listing} on a plain background."]
        for o, nm in zip(objs, names):
            side = o["bbox"][2] - o["bbox"][0]
            size = "large" if side > 0.3 * min(w, h) else "small" if side < 0.22 * min(w, h) else "medium-sized"
            parts.append(f"The {nm} is {size} and sits {_region(o, w, h)}.")
        for a, b, na, nb in zip(objs, objs[1:], names, names[1:]):
            parts.append(f"The {na} is {_rel(a, b)} the {nb}.")
        return [{"question": "Describe the image in detail.", "answer": " ".join(parts)}]

    @staticmethod
    def _reasoning(objs: list[dict], names: list[str]) -> list[dict]:
        """Which object is nearest the top, and what follows."""
        n = len(objs)
        top = min(range(n), key=lambda i: objs[i]["bbox"][1])
        if n == 1:
            answer = f"There is only one object, {article(names[0])}, so it is also the one nearest the top of the image."
        else:
            others = [names[i] for i in range(n) if i != top]
            answer = (f"Comparing how high each object sits, the {names[top]} has the smallest distance to the top edge, "
                      f"while the {' and the '.join(others)} {'sit' if len(others) > 1 else 'sits'} lower. "
                      f"So the {names[top]} is nearest the top, and its colour is {objs[top]['color'] or 'unknown'}.")
        return [{"question": "Which object is nearest the top of the image, and what colour is it?", "answer": answer}]


# ---------------------------------------------------------------------------------- OpenAI-compatible


class RateLimiter:
    """Token buckets for requests/s and tokens/min (either may be off)."""

    def __init__(self, requests_per_s: float | None = None, tokens_per_min: float | None = None):
        self.rps, self.tpm = requests_per_s, tokens_per_min
        self.req_level = requests_per_s or 0.0
        self.tok_level = tokens_per_min or 0.0
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: float = 0.0) -> None:
        if not self.rps and not self.tpm:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                dt, self.last = now - self.last, now
                if self.rps:
                    self.req_level = min(self.rps, self.req_level + dt * self.rps)
                if self.tpm:
                    self.tok_level = min(self.tpm, self.tok_level + dt * self.tpm / 60)
                need_r = 0.0 if not self.rps or self.req_level >= 1 else (1 - self.req_level) / self.rps
                want = min(tokens, self.tpm or 0)
                need_t = 0.0 if not self.tpm or self.tok_level >= want else (want - self.tok_level) / (self.tpm / 60)
                if need_r <= 0 and need_t <= 0:
                    if self.rps:
                        self.req_level -= 1
                    if self.tpm:
                        self.tok_level -= want
                    return
                await asyncio.sleep(max(need_r, need_t))


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


MIN_SECRET_CHARS = 6  # shorter "keys" are placeholders; scrubbing them would garble replies


def secrets_of(api_key: str | None, base_url: str) -> list[bytes]:
    """What must never be stored: the API key, and the credentials of a `user:password@` URL
    (as typed, and as the Basic authorization header carries them)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(base_url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    found = [api_key or "", password, f"{user}:{password}" if password else ""]
    out = [x.encode() for x in found if len(x) >= MIN_SECRET_CHARS]
    out += [base64.b64encode(x) for x in out if b":" in x]
    return sorted(set(out), key=len, reverse=True)


class ReplyTooLarge(Exception):
    pass


class BadEncoding(Exception):
    pass


def _decompress(data: bytes, encoding: str, cap: int) -> bytes:
    """A reply body as sent (we ask for identity), or gzip/deflate decompressed to at most `cap`
    bytes (a small compressed reply may expand a thousandfold)."""
    import zlib

    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadEncoding(encoding)
    d = zlib.decompressobj(zlib.MAX_WBITS | 32 if "gzip" in encoding else zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error:
        raise BadEncoding(encoding) from None
    if len(out) > cap or d.unconsumed_tail:
        raise ReplyTooLarge
    return out


class OpenAITeacher:
    """An OpenAI-compatible chat-completions server. A reply is read as a stream and dropped
    past `max_reply_bytes` (a failure, `reply_too_large`, not retried); every secret (the API
    key, URL credentials) is cut out of a reply before any of it is parsed or stored."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 32, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 0.5, backoff_cap: float = 30.0, max_tokens: int = 512,
                 temperature: float = 0.2, structured: bool = True, requests_per_s: float | None = None,
                 tokens_per_min: float | None = None, seed: int = 0, max_reply_bytes: int = 1 << 20):
        import httpx

        self.model = model
        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries, self.backoff, self.backoff_cap = timeout, max_retries, backoff, backoff_cap
        self.max_tokens, self.temperature, self.max_reply_bytes = max_tokens, temperature, max_reply_bytes
        self.structured = structured
        self.limiter = RateLimiter(requests_per_s, tokens_per_min)
        self.rng = random.Random(seed)
        self.secrets = secrets_of(api_key, base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))

    async def aclose(self) -> None:
        await self.client.aclose()

    def body(self, req: Request) -> dict:
        content: list[dict] = [{"type": "text", "text": req.prompt}]
        if req.image_bytes:
            url = f"data:{MIME.get(req.image_ext or 'jpg', 'image/jpeg')};base64,{base64.b64encode(req.image_bytes).decode()}"
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        body = {"model": self.model, "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.structured:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "turns", "strict": True, "schema": TURNS_SCHEMA}}
        return body

    def scrub(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret, b"***")
        return data

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_cap)
        return self.rng.uniform(0, min(self.backoff_cap, self.backoff * 2**attempt))  # full jitter

    async def _post(self, body: dict, req: Request) -> tuple[int, str | None, bytes]:
        """(status, Retry-After, reply bytes with secrets cut out), reading at most max_reply_bytes
        off the wire and, for a compressed reply, at most max_reply_bytes once decompressed."""
        async with self.client.stream("POST", "/chat/completions", content=orjson.dumps(body),
                                      headers={"Content-Type": "application/json", "Accept-Encoding": "identity",
                                               "X-Vlmtool-Request": req.key}) as r:
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_reply_bytes:
                raise ReplyTooLarge
            buf = bytearray()
            async for chunk in r.aiter_raw():
                buf += chunk
                if len(buf) > self.max_reply_bytes:
                    raise ReplyTooLarge
            data = _decompress(bytes(buf), r.headers.get("content-encoding", ""), self.max_reply_bytes)
            return r.status_code, r.headers.get("retry-after"), self.scrub(data)

    async def _attempt(self, body: dict, req: Request, res: Result) -> tuple[str, float | None]:
        """One request: ("ok" | "downgrade" | a failure reason, Retry-After seconds). Fills `res` on ok."""
        import httpx

        try:
            status, retry_after, data = await asyncio.wait_for(self._post(body, req), self.timeout)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            return "timeout", None
        except httpx.TransportError:  # refused, reset, closed before a response
            return "connection", None
        except ReplyTooLarge:
            return "reply_too_large", None
        except BadEncoding:
            return "malformed_response", None
        except httpx.HTTPError:  # a body that cannot be decoded, too many redirects
            return "malformed_response", None
        if status == 200:
            return self._parse(data, req, res), None
        if status == 400 and "response_format" in body and b"response_format" in data:
            return "downgrade", None
        if status == 429:
            return "rate_limited", retry_after_seconds(retry_after)
        if status >= 500:
            return "server_error", retry_after_seconds(retry_after)
        return f"http_{status}", None

    @staticmethod
    def _parse(data: bytes, req: Request, res: Result) -> str:
        try:
            reply = orjson.loads(data)
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            usage = reply.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
            return "malformed_response"
        if not isinstance(text, str):
            return "malformed_response"
        res.prompt_tokens += prompt_tokens
        res.completion_tokens += completion_tokens
        res.finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        res.turns = parse_turns(text, req.task, req.question)
        if res.turns is None:
            res.unparsable = text[:200]
        return "ok"

    async def generate(self, req: Request) -> Result:
        res = Result()
        attempt = 0
        while True:
            body = self.body(req)
            await self.limiter.acquire(req.image_tokens + len(req.prompt) / 4 + self.max_tokens)
            outcome, retry_after = await self._attempt(body, req, res)
            if outcome == "ok":
                return res
            if outcome == "downgrade":
                self.structured = False  # this server does not take json_schema: ask for JSON in the prompt alone
                continue
            res.errors.append(outcome)
            if outcome in NOT_RETRIED or outcome.startswith("http_") or attempt >= self.max_retries:
                res.failed = outcome  # other 4xx, a reply over the cap: retrying will not help
                return res
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1
            res.retries += 1


NOT_RETRIED = ("reply_too_large",)


class LocalTeacher:
    """A trained checkpoint as a synth teacher (`--teacher local:DIR`): one turn per request,
    the request's question (or the task's default) answered about its image. Requests in flight
    are answered together, up to `batch_size` a batch (one model, one batch at a time, in a
    thread); each result counts its prompt tokens (visual slots included) and answer tokens."""

    name = "local"

    def __init__(self, checkpoint: str, device="cpu", max_new_tokens: int = 96, temperature: float = 0.0,
                 batch_size: int = 8):
        from vlmtool.vlm.infer import load_answerer

        self.answerer = load_answerer(checkpoint, device, batch_size=batch_size)
        self.model = f"local:{Path(checkpoint).resolve()}"
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self._pending: list = []  # (request, future) waiting for the next batch
        self._runner: asyncio.Task | None = None

    def question(self, req) -> str:
        return req.question or DEFAULT_QUESTION.get(req.task) or "Describe the image briefly."

    async def generate(self, req):
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((req, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # the other workers' requests join this batch
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            try:
                results = await asyncio.to_thread(self._answer, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 -- each request of the batch fails, the job goes on
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _answer(self, reqs: list) -> list:
        """Results for a batch: those with an image together, blind ones together."""
        from vlmtool.errors import UsageError
        from vlmtool.vlm.infer import open_image

        out, seeing, blind = [None] * len(reqs), [], []
        for i, req in enumerate(reqs):
            try:
                (seeing if req.image_bytes else blind).append((i, open_image(req.image_bytes) if req.image_bytes else None))
            except UsageError as e:
                out[i] = Result(failed="local_error", errors=[f"local_error: {e}"])
        for group in (seeing, blind):
            if group:
                images = [im for _, im in group] if group is seeing else None
                for (i, _), res in zip(group, self._run([reqs[i] for i, _ in group], images)):
                    out[i] = res
        return out

    def _run(self, reqs: list, images) -> list:
        from vlmtool.errors import UsageError
        from vlmtool.vlm.infer import PromptTooLong

        ans, qs = self.answerer, [self.question(r) for r in reqs]
        try:
            inputs = ans.inputs(images, qs)
            ids = ans.model.generate(**inputs, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                     stop_ids=ans.tok.stop_ids, use_cache=True)
        except PromptTooLong as e:  # that request fails; the rest of the batch is answered
            rest = [j for j in range(len(reqs)) if j != e.index]
            done = self._run([reqs[j] for j in rest], None if images is None else [images[j] for j in rest]) if rest else []
            out = dict(zip(rest, done))
            out[e.index] = Result(failed="local_error", errors=[f"local_error: {e}"])
            return [out[j] for j in range(len(reqs))]
        except UsageError as e:
            return [Result(failed="local_error", errors=[f"local_error: {e}"])] * len(reqs)
        prompt = inputs["attention_mask"].sum(1).tolist()
        return [Result(turns=[{"question": q, "answer": ans.tok.decode(x, skip_special=True).strip()}],
                       finish_reason="length" if len(x) >= self.max_new_tokens else "stop", prompt_tokens=int(p),
                       completion_tokens=len(x)) for q, x, p in zip(qs, ids, prompt)]

    async def aclose(self) -> None:
        return None
