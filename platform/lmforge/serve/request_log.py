"""Request records for ``lmforge monitor``: one JSON line per request, without its text.

With ``serve.request_log`` set (a dir: local, or on a multi-node cluster a filesystem every node mounts),
each serving process appends to its own ``requests-<host>-<pid>.jsonl`` (no two writers share a file):
a finished request as ``{time, model, endpoint, status: 200, prompt_tokens, completion_tokens,
finish_reasons, language, user}`` from the model replica (the prompt's language is detected there; the
text is never written; ``user`` is OpenAI's end-user field, ``lmforge-eval`` on an evaluation's
requests), a refused one as ``{time, model, endpoint, status}`` from the HTTP front.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path


class RequestLog:
    def __init__(self, directory: str):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"requests-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()  # the engine thread and the event loop both finish requests

    def write(self, entry: dict) -> None:
        line = json.dumps({"time": round(time.time(), 3), **entry}, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)


def prompt_language(prompt) -> str:
    """The language code (fastText, as prepare detects it) of a prompt, a list of prompts or a chat's user
    turns; ``und`` when it cannot tell."""
    from lmforge.data.language import detect

    text = _words(prompt)
    return detect(text, min_score=0.4)[0] if text else "und"


def _words(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(p if isinstance(p, str) else p.get("content") if isinstance(p, dict) and
                        p.get("role") == "user" and isinstance(p.get("content"), str) else "" for p in prompt).strip()
    return ""


def read(directory: str) -> list[dict]:
    """Every record under ``directory``, oldest first (a torn last line, still being written, skipped)."""
    records = []
    for path in sorted(Path(directory).glob("requests-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return sorted(records, key=lambda r: r.get("time", 0.0))
