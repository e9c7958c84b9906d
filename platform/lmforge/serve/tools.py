"""Tool calls on the chat API, as OpenAI shapes them: ``tools``, ``tool_choice``, ``tool_calls`` back.

How a model learns of the tools: a chat template that takes ``tools`` (Qwen's, Llama 3.1's, ...)
renders them itself; for one that does not (SmolLM2's, every ``lmforge pretrain`` model's) lmforge adds
a system message, the documented default::

    You can call these functions. To call one, answer with only a JSON object
    {"name": <function name>, "arguments": <its arguments>}.
    Functions:
    {"name": "get_weather", "description": "...", "parameters": {...}}

and earlier calls and their results are written into the conversation as text. With ``tool_choice``
``required`` or a named function the answer is constrained to such an object (the function's
``parameters`` schema included, closed to other keys unless it sets ``additionalProperties``) by the
structured-output grammar, so it always parses; with ``auto`` an
answer that is exactly such an object becomes a call, anything else is the message's content; with
``none`` the tools are not shown. One call per answer (``parallel_tool_calls`` is not done).
"""

from __future__ import annotations

import json
import secrets

from lmforge.generate.constraints import Constraint
from lmforge.serve.openai_api import RequestError
from lmforge.tasks.chat import chat_prompt

_STREAMING = object()  # a choice of call_delta's whose text is content, passed through as it comes
INSTRUCTIONS = ('You can call these functions. To call one, answer with only a JSON object '
                '{"name": <function name>, "arguments": <its arguments>}.\nFunctions:\n')


def functions(tools: list[dict] | None, tool_choice) -> list[dict]:
    """The request's functions (``{"name", "description", "parameters"}``) that the model may call; none
    for ``tool_choice: none``. A 400 for a malformed tool or a choice naming no given function."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise RequestError("tool_choice needs tools", "tool_choice")
        return []
    found = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise RequestError(f"tools[{i}]: a tool is {{\"type\": \"function\", \"function\": {{...}}}}", "tools")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"tools[{i}].function.name: a non-empty string", "tools")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise RequestError(f"tools[{i}].function.parameters: a JSON schema of type object", "tools")
        found.append({"name": fn["name"], "description": fn.get("description") or "", "parameters": params})
    names = [f["name"] for f in found]
    if len(set(names)) != len(names):
        raise RequestError("tools: function names must be distinct", "tools")
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type") != "function" or name not in names:
            raise RequestError(f"tool_choice: names no function among the tools ({', '.join(names)})", "tool_choice")
    elif tool_choice not in (None, "auto", "required"):
        raise RequestError("tool_choice: one of none, auto, required or {\"type\": \"function\", ...}", "tool_choice")
    return found


def constraint(fns: list[dict], tool_choice) -> Constraint | None:
    """The grammar of a call when one is required (``required``: any of ``fns``; a named one: that one)."""
    if not fns or tool_choice in (None, "auto"):
        return None
    if isinstance(tool_choice, dict):
        fns = [f for f in fns if f["name"] == tool_choice["function"]["name"]]
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": f["name"]}, "arguments": _closed(f["parameters"])}} for f in fns]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return Constraint("json_schema", json.dumps(schema), "tools")


def _closed(schema: dict) -> dict:
    """The arguments' schema with no properties beyond those named unless it says otherwise (OpenAI's
    strict function calling asks for this; a small model otherwise invents extra keys, even the schema's)."""
    return schema if "additionalProperties" in schema else {**schema, "additionalProperties": False}


def system_text(fns: list[dict]) -> str:
    return INSTRUCTIONS + "\n".join(json.dumps(f, ensure_ascii=False) for f in fns)


def template_takes_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def parse_call(text: str, fns: list[dict]) -> dict | None:
    """``{"name", "arguments"}`` when ``text`` is exactly a call of one of ``fns``, else None."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    names = {f["name"] for f in fns}
    if not (isinstance(call, dict) and set(call) == {"name", "arguments"} and call["name"] in names
            and isinstance(call["arguments"], dict)):
        return None
    return call


def tool_call(call: dict) -> dict:
    """OpenAI's shape of one call: the arguments as a JSON string."""
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}


def as_text(message: dict) -> dict:
    """A message of a tool conversation for a template that knows nothing of tools: an assistant's calls
    as the JSON it would answer, a tool's result as a user turn that says whose it is."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"Result of {message.get('tool_call_id') or 'the call'}: "
                                           f"{message['content']}"}
    if message.get("tool_calls"):
        calls = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
                 for c in message["tool_calls"]]
        return {"role": "assistant", "content": "\n".join(json.dumps(c, ensure_ascii=False) for c in calls)}
    return {"role": message["role"], "content": message["content"]}


def hf_message(message: dict) -> dict:
    """A message as chat templates that take tools read it: a call's arguments as an object."""
    if not message.get("tool_calls"):
        return message
    calls = [{"type": "function", "function": {"name": c["function"]["name"],
                                               "arguments": _arguments(c["function"]["arguments"])}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _arguments(arguments):
    """OpenAI sends a call's arguments as a JSON string; an object when it parses."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def prompt(tokenizer, messages: list[dict], fns: list[dict]) -> tuple[list[int], list[str]]:
    """A chat's prompt ids and stop strings, with the functions it may call: through a template that takes
    tools, or as the documented system message (earlier calls and results as text)."""
    if template_takes_tools(tokenizer):
        shown = [{"type": "function", "function": f} for f in fns]
        return chat_prompt(tokenizer, [hf_message(m) for m in messages], tools=shown or None)
    messages = [as_text(m) for m in messages]
    if fns:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + system_text(fns)}
        else:
            messages.insert(0, {"role": "system", "content": system_text(fns)})
    return chat_prompt(tokenizer, messages)


def with_call(choice: dict, fns: list[dict]) -> dict:
    """A chat choice whose content is a call of one of ``fns``, as OpenAI returns calls."""
    call = parse_call(choice["message"]["content"] or "", fns) if fns else None
    if call is None:
        return choice
    message = {"role": "assistant", "content": None, "tool_calls": [tool_call(call)]}
    return {**choice, "message": message, "finish_reason": "tool_calls"}


def call_delta(held: dict, index: int, out, fns: list[dict]) -> dict | None:
    """With tools, streamed: a choice's text is held while it may still be a call (it starts with ``{``),
    then sent as one call (its id, name and whole arguments in one delta, as OpenAI's own stream may); text
    that cannot be a call streams as content as soon as that is known."""
    if held.get(index) is _STREAMING:
        delta = {"content": out.text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": out.finish_reason} \
            if out.text or out.finish_reason else None
    held[index] = held.get(index, "") + out.text
    text = held[index]
    if out.finish_reason is None and (not text.strip() or text.lstrip().startswith("{")):
        return None
    call = parse_call(text, fns)
    if call is None:
        held[index] = _STREAMING
        return {"index": index, "delta": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": out.finish_reason}
    delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **tool_call(call)}]}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": "tool_calls"}
