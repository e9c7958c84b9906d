"""A served model as the model under evaluation: any OpenAI-compatible endpoint (``http(s)://host/v1``),
lmforge's own ``serve`` among them, through the official ``openai`` client.

Prompts go as token ids, made by the model's tokenizer exactly as a local run makes them, so a local and a
served evaluation of one model score the same tokens. Scoring asks ``/v1/completions`` for the prompt's
own log-probabilities (``echo: true, logprobs: 1, max_tokens: 1``, as lm-evaluation-harness's
``local-completions`` does) and reads the continuation's off the end; generation asks for a greedy
completion with the task's stop strings. Requests run ``concurrency`` at a time; the client retries
connection errors, 429 and 5xx with backoff (``retries``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed

# OpenAI's end-user field on every request an evaluation sends: request logs tell its traffic from users'
# (lmforge monitor leaves it out of the traffic statistics)
EVAL_USER = "lmforge-eval"

class EndpointError(RuntimeError):
    """An endpoint that cannot serve the evaluation; the message names it and what failed."""


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


class EndpointBackend:
    def __init__(self, url: str, tokenizer: str, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 3, timeout: float = 300.0):
        import openai
        from transformers import AutoTokenizer

        from lmforge import storage

        self.url, self.concurrency = url.rstrip("/"), concurrency
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or "none", max_retries=retries,
                                    timeout=timeout)
        self.tokenizer = AutoTokenizer.from_pretrained(storage.local_dir(tokenizer))
        self._model: str | None = None

    @classmethod
    def from_config(cls, url: str, cfg) -> EndpointBackend:
        if not cfg.tokenizer:
            from lmforge.config import ConfigError

            raise ConfigError(f"tokenizer: evaluating the endpoint {url} needs the model's tokenizer (an HF or "
                              "export dir): prompts go as its token ids, as a local evaluation makes them")
        return cls(url, cfg.tokenizer, os.environ.get(cfg.api_key_env) or None, cfg.concurrency, cfg.retries)

    @property
    def model(self) -> str:
        """The served model's name: the first ``/v1/models`` lists."""
        if self._model is None:
            import openai

            try:
                listed = [m.id for m in self.client.models.list()]
            except openai.AuthenticationError as e:
                raise EndpointError(f"{self.url}: the key was refused ({e.status_code}); set it in the "
                                    "environment variable named by api_key_env") from e
            except openai.APIError as e:
                raise EndpointError(f"{self.url}: not reachable as an OpenAI-compatible endpoint ({e})") from e
            if not listed:
                raise EndpointError(f"{self.url}: /v1/models lists no model")
            self._model = listed[0]
        return self._model

    def check(self, logprobs: bool) -> None:
        """Fail before the work starts: the endpoint answers, and (when tasks score) returns prompt logprobs."""
        ids = self.tokenizer("The sky is", verbose=False).input_ids or [0]
        if not logprobs:
            self._complete(ids, max_tokens=1)
            return
        got = self._score(ids)
        if got is None or len(got[0]) < len(ids) or any(v is None for v in got[0][1:]):
            raise EndpointError(f"{self.url}: /v1/completions with echo=true and logprobs=1 returned no prompt "
                                "logprobs, so multiple-choice and perplexity tasks cannot be scored through it "
                                "(generation tasks can)")

    def _complete(self, prompt: list[int], **kwargs):
        import openai

        try:
            return self.client.completions.create(model=self.model, prompt=prompt, temperature=0, user=EVAL_USER,
                                                  **kwargs)
        except openai.APIError as e:
            raise EndpointError(f"{self.url}: a completion failed ({e})") from e

    def _score(self, prompt: list[int]) -> tuple[list[float | None], list[dict | None]] | None:
        """The prompt tokens' logprobs (the first is None) and top-1 alternatives, as the endpoint computes
        them; None when it returns none."""
        choice = self._complete(prompt, max_tokens=1, echo=True, logprobs=1).choices[0]
        if choice.logprobs is None or not choice.logprobs.token_logprobs:
            return None
        return choice.logprobs.token_logprobs[: len(prompt)], choice.logprobs.top_logprobs[: len(prompt)]

    def _each(self, fn, items: list, progress) -> list:
        out = [None] * len(items)
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for done, future in enumerate(as_completed(futures), start=1):
                out[futures[future]] = future.result()
                if progress:
                    progress(done)
        return out

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]], batch_size: int = 8,
                      progress=None) -> list[tuple[float, bool]]:
        def one(pair):
            ctx, cont = pair
            got = self._score(ctx + cont)
            if got is None:
                raise EndpointError(f"{self.url}: a scoring request came back without logprobs")
            token_logprobs, top = got
            tail, tops = token_logprobs[len(ctx):], top[len(ctx):]
            # greedy: each continuation token is the endpoint's top-1 at its position
            greedy = all(t and lp is not None and lp >= max(t.values()) - 1e-6 for lp, t in zip(tail, tops))
            return float(sum(tail)), bool(greedy)

        return self._each(one, requests, progress)

    def generate(self, prompts: list[list[int]], max_tokens: int, stop: list[str], batch_size: int = 8,
                 progress=None) -> list[str]:
        def one(prompt):
            kwargs = {"stop": stop[:4]} if stop else {}  # OpenAI's limit: up to 4 stop strings
            text = self._complete(prompt, max_tokens=max_tokens, **kwargs).choices[0].text
            for s in stop[4:]:
                text = text.split(s, 1)[0]
            return text

        return self._each(one, prompts, progress)
