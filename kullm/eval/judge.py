"""The judge of `kullm eval`: the KULLM3 authors' G-Eval prompt, sent to any OpenAI-compatible
Chat Completions server, and tolerant parsing of the five scores it gives.

The prompt is the one the KULLM repository (github.com/nlpai-lab/KULLM, README "Model
Evaluation", linked from the model card) prints for KULLM3's evaluation with
`gpt-4-0125-preview`, verbatim. The card summary in this project (shared/kullm3/README.md)
does not print it. It is sent as the single user message, temperature 0.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from kullm_core.errors import KullmError

log = logging.getLogger(__name__)

CRITERIA = ("Fluency", "Coherence", "Accuracy", "Completeness", "Overall Quality")
"""The five criteria, named exactly as the card writes them."""

EVAL_PROMPT = """You will be given evaluation instruction, input and AI-generated response.
Your task is to rate the response on given metric.
Please make sure you read and understand these instructions carefully. Please keep this \
document open while reviewing, and refer to it as needed.

Evaluation Criteria:
- Fluency (1-5): The quality of the language used in the translation. A high-quality response \
should be grammatically correct, idiomatic, and free from spelling and punctuation errors.
- Coherence (1-5): A high score indicates that the response maintains consistent context. A low \
score is given if the response shifts context or language inappropriately from instruction(e.g. \
instruction's language is Korean, but response is English).
- Accuracy (1-5) - The correctness of the answer. The answer should be factually correct and \
directly answer the question asked
- Completeness (1-5) - The extent to which the response covers all aspects of the question. The \
response should not just address one part of the question, but should provide a comprehensive \
response.
- Overall Quality (1-5) - The overall effectiveness and excellence of the response, integrating \
considerations of all above criteria.

Evaluation Steps:
1. Read the instruction and input carefully and understand what it is asking.
2. Read the AI-generated response and Evaluation Criteria.
3. Assign a score for each criterion on a scale of 1 to 5, where 1 is the lowest and 5 is the \
highest.

Instruction:
{instruction}

Input:
{input}

Response:
{response}

Evaluation Form (scores ONLY):
- Fluency (1-5):
- Coherence (1-5):
- Accuracy (1-5):
- Completeness (1-5):
- Overall Quality (1-5):"""

_SLOT = re.compile(r"\{(instruction|input|response)\}")


def fill_prompt(instruction: str, input_text: str, response: str) -> str:
    """The card's prompt with the three slots filled in one pass (a `{response}` written by
    the model is text, not a slot)."""
    values = {"instruction": instruction, "input": input_text, "response": response}
    return _SLOT.sub(lambda m: values[m.group(1)], EVAL_PROMPT)


_NUMBER = r"([0-5](?:\.\d+)?)"
_SCALE = r"(?:\s*\(\s*[0-5]\s*[-–~]\s*5\s*\))?"


def _pattern(name: str) -> re.Pattern[str]:
    # "Fluency (1-5): 4", "**Coherence**: 4/5", "Overall Quality - I'd give it a 3 out of 5"
    words = r"\s+".join(re.escape(w) for w in name.split())
    return re.compile(words + _SCALE + r"[^0-9\n]{0,24}?" + _NUMBER + r"(?!\.?\d)",
                      re.IGNORECASE)


_PATTERNS = {name: _pattern(name) for name in CRITERIA}


def parse_scores(text: str) -> dict[str, float] | None:
    """The five scores in a judge's answer, or None unless every one is found in 1..5.

    The last mention of a criterion wins (a judge that reasons first states its verdict last).
    """
    scores: dict[str, float] = {}
    for name, pattern in _PATTERNS.items():
        found = [float(m.group(1)) for m in pattern.finditer(text)]
        if not found or not 1 <= found[-1] <= 5:
            return None
        scores[name] = found[-1]
    return scores


class JudgeUnreachable(KullmError):
    """The judge server cannot be reached (one line for the user)."""


@dataclass
class Verdict:
    """A judge's answer to one item: `scores` is None when it never gave parseable ones."""

    scores: dict[str, float] | None
    raw: str
    calls: int
    error: str = ""
    raws: list[str] = field(default_factory=list)


Sleep = Callable[[float], Awaitable[Any]]
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def retry_after_s(resp: httpx.Response) -> float | None:
    """The server's Retry-After (seconds or an HTTP date), if it sent one."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Judge:
    """Chat Completions client for the judge. `async with Judge(...) as j: await j.score(...)`.

    Retries: 429/5xx and network errors with jittered exponential backoff (a Retry-After is
    respected, up to `max_wait_s`), an unparseable answer `parse_retries` more times.
    """

    def __init__(
        self, url: str, model: str, api_key: str = "", *, timeout_s: float = 120.0,
        http_retries: int = 6, parse_retries: int = 2, backoff_s: float = 1.0,
        max_wait_s: float = 60.0, sleep: Sleep = asyncio.sleep, seed: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.http_retries = http_retries
        self.parse_retries = parse_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self._jitter = random.Random(seed)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Judge:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self) -> None:
        """Fail fast, before any answer is generated, when nothing answers at the URL.

        Raises:
            JudgeUnreachable: one line naming the URL.
            JudgeError: the server rejects the API key.
        """
        assert self._client is not None, "use `async with`"
        try:
            resp = await self._client.get("/models", timeout=10.0)
        except httpx.HTTPError as exc:
            raise JudgeUnreachable(
                f"the judge at {self.url} cannot be reached ({type(exc).__name__}: {exc})"
                .replace(": )", ")")
            ) from None
        if resp.status_code in (401, 403):
            raise JudgeError(f"the judge at {self.url} rejected the API key (HTTP "
                             f"{resp.status_code}; see --judge-key-env)")

    def _wait(self, attempt: int, hint: float | None) -> float:
        backoff = self.backoff_s * 2 ** attempt * (0.5 + self._jitter.random() / 2)
        return min(self.max_wait_s, max(backoff, hint or 0.0))

    async def _complete(self, prompt: str) -> str:
        """One answer text; HTTP trouble retried. Raises JudgeUnreachable when it persists."""
        assert self._client is not None, "use `async with`"
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        last = ""
        for attempt in range(self.http_retries + 1):
            hint: float | None = None
            try:
                resp = await self._client.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if resp.status_code < 300:
                    return _content(resp)
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in _RETRY_STATUS:
                    raise JudgeError(f"the judge at {self.url} refused the request ({last})")
                hint = retry_after_s(resp)
            if attempt < self.http_retries:
                delay = self._wait(attempt, hint)
                log.info("judge: %s; retrying in %.1f s", last, delay)
                await self.sleep(delay)
        raise JudgeUnreachable(f"the judge at {self.url} kept failing ({last})")

    async def score(self, instruction: str, input_text: str, response: str) -> Verdict:
        """Ask for the five scores; an unparseable answer is asked again, never guessed."""
        prompt = fill_prompt(instruction, input_text, response)
        raws: list[str] = []
        for _ in range(self.parse_retries + 1):
            raw = await self._complete(prompt)
            raws.append(raw)
            scores = parse_scores(raw)
            if scores is not None:
                return Verdict(scores, raw, len(raws), raws=raws)
        return Verdict(None, raws[-1], len(raws), error="unparseable judge answer", raws=raws)


class JudgeError(KullmError):
    """The judge refused a request for good (a bad key, an unknown model)."""


def _content(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        return str(data["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return resp.text
