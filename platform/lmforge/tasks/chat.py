"""Chat prompts: the model's own chat template from its tokenizer, or lmforge's documented default.

The default, for models trained without one (every ``lmforge pretrain`` model), is plain text a base
model has seen the like of::

    System: You are terse.
    User: Name a river.
    Assistant:

and ``"\\nUser:"`` is added to the request's stop strings, so the reply ends where the model would
start the next turn. A model's own template (SmolLM2's ChatML, say) brings its special tokens; its text
is tokenized without adding more.
"""

from __future__ import annotations

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ["\nUser:"]


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[str]]:
    """Token ids of the conversation up to the assistant's turn, and the stop strings the template needs;
    ``tools`` (OpenAI's shape) go to a template that takes them."""
    if has_template(tokenizer):
        extra = {"tools": tools} if tools else {}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return tokenizer(text, add_special_tokens=False, verbose=False).input_ids, []
    text = tokenizer.apply_chat_template(messages, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, verbose=False).input_ids, list(DEFAULT_STOP)
