"""Instruction and chat records -> rendered text -> token ids with causal-LM labels.

The chat template is the model's own (or a named/Jinja one) and is used exactly as shipped:
which characters belong to assistant turns is found by render-and-diff (each assistant turn's
prefix rendered with the generation prompt, then with the turn), not by `{% generation %}` tags,
which most templates lack. Characters map to tokens through the fast tokenizer's offsets, so a
BPE merge across the prompt/response boundary cannot shift the labels the way re-tokenizing a
prefix does.
"""

from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from sft.errors import ConfigError, DataError
from sft.tasks.base import IGNORE_INDEX

ROLES = ("system", "user", "assistant")

_CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Stanford Alpaca (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT) with "\n" after
# "### Response:" and eos after the response. An alpaca record's user message carries its
# `instruction` and `input` separately (see to_messages) so the "### Input:" block is exact;
# a plain user message goes under "### Instruction:". A leading system message replaces the
# preamble; further turns repeat the Instruction/Response blocks.
_ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                    "Write a response that appropriately completes the request.\\n\\n")
_ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                          "provides further context. Write a response that appropriately completes "
                          "the request.\\n\\n")
_ALPACA = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}"
    "{%- elif messages[0]['input'] is defined and messages[0]['input'] -%}"
    "{{- '" + _ALPACA_PREAMBLE_INPUT + "' -}}"
    "{%- else -%}"
    "{{- '" + _ALPACA_PREAMBLE + "' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    # blocks after a response are separated by a blank line put before them (not after the
    # eos), so a conversation never ends in untrained whitespace
    "{%- if loop.previtem is defined and loop.previtem['role'] == 'assistant' -%}"
    "{{- '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['input'] is defined and message['input'] and message['instruction'] is defined -%}"
    "{{- '### Instruction:\\n' + message['instruction'] + '\\n\\n### Input:\\n' + message['input']"
    " + '\\n\\n' -}}"
    "{%- else -%}"
    "{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Response:\\n' + message['content'] + eos_token -}}"
    "{%- elif not loop.first -%}"
    "{{- message['content'] + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

# HuggingFaceH4/zephyr-7b-beta's format, with the generation prompt ending in "\n" as the
# rendered assistant turn does (the original's bare '<|assistant|>' is not prefix-stable)
_ZEPHYR = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

NAMED_TEMPLATES: dict[str, str] = {"chatml": _CHATML, "alpaca": _ALPACA, "zephyr": _ZEPHYR}
_NEEDS_EOS = ("alpaca", "zephyr")  # they end each response with the tokenizer's eos_token


def _model_name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def resolve_template(tokenizer: PreTrainedTokenizerBase, chat_template: str | None) -> str:
    """The Jinja template to render with: the tokenizer's own (None), a named one, or `chat_template`
    itself when it is Jinja. Does not modify the tokenizer."""
    names = "|".join(NAMED_TEMPLATES)
    if chat_template is None:
        own = tokenizer.chat_template
        if isinstance(own, dict):  # several named templates: HF's own choice is "default"
            own = own.get("default")
        if not own:
            raise ConfigError(f"model {_model_name(tokenizer)} has no chat template; "
                              f"set task.chat_template={names}|<jinja>")
        return own
    if chat_template in NAMED_TEMPLATES:
        if chat_template in _NEEDS_EOS and tokenizer.eos_token is None:
            raise ConfigError(f"task.chat_template={chat_template} ends responses with the eos token, but "
                              f"model {_model_name(tokenizer)} has none; use task.chat_template=chatml")
        return NAMED_TEMPLATES[chat_template]
    if "{%" in chat_template or "{{" in chat_template:
        return chat_template
    raise ConfigError(f"unknown task.chat_template '{chat_template}'; use one of "
                      f"{', '.join(NAMED_TEMPLATES)} or a Jinja template string")


def detect_format(column_names: list[str], columns: dict[str, str]) -> str:
    """The record format: "messages" when that column exists, "alpaca" when instruction and output do."""
    messages, instruction, output = (columns.get(key, key) for key in ("messages", "instruction", "output"))
    if messages in column_names:
        return "messages"
    if instruction in column_names and output in column_names:
        return "alpaca"
    raise DataError(f"cannot tell the record format from the columns {sorted(column_names)}: expected "
                    f"'{messages}' (chat) or '{instruction}' + '{output}' (alpaca); set "
                    f"task.messages_column or task.instruction_column/output_column to your column names")


def _text_field(record: dict, columns: dict[str, str], key: str, where: str, required: bool) -> str:
    column = columns.get(key, key)
    if column not in record:
        if not required:
            return ""
        raise DataError(f"{where} has no '{column}' column (found: {', '.join(map(str, record))}); "
                        f"set task.{key}_column to the column that holds the {key}")
    value = record[column]
    if value is None:  # datasets fills columns missing from some rows with None
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: '{column}' must be a string, got {type(value).__name__}")
    return value


def to_messages(record: dict, fmt: str, columns: dict[str, str], system_prompt: str | None, *,
                where: str = "record", require_assistant: bool = True) -> list[dict[str, Any]]:
    """A record as a chat: [{role, content}, ...].

    fmt "alpaca": [system?, user, assistant] from the instruction, input and output columns;
    the user content is the instruction plus "\\n\\n" + input when there is one (the user message
    also keeps `instruction` and `input`, so the alpaca template renders the "### Input:" block).
    fmt "messages": the messages column, a list of {role, content}.
    `system_prompt` becomes the first turn of records that have no system turn of their own.
    `require_assistant=False` accepts records without a response (prompts to generate from)."""
    if fmt == "alpaca":
        instruction = _text_field(record, columns, "instruction", where, required=True)
        extra = _text_field(record, columns, "input", where, required=False)
        output = _text_field(record, columns, "output", where, required=require_assistant)
        user: dict[str, Any] = {"role": "user", "content": instruction}
        if extra:
            user = {"role": "user", "content": f"{instruction}\n\n{extra}", "instruction": instruction,
                    "input": extra}
        messages = [user]
        if require_assistant or output:
            messages.append({"role": "assistant", "content": output})
    elif fmt == "messages":
        messages = _read_messages(record, columns, where)
    else:
        raise ConfigError(f"unknown record format '{fmt}'; set task.format=alpaca|messages|auto")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    _check_messages(messages, where, require_assistant)
    return messages


def _read_messages(record: dict, columns: dict[str, str], where: str) -> list[dict[str, Any]]:
    column = columns.get("messages", "messages")
    if column not in record:
        raise DataError(f"{where} has no '{column}' column (found: {', '.join(map(str, record))}); "
                        f"set task.messages_column to the column that holds the chat")
    turns = record[column]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: '{column}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{where}: message {i} must be a {{role, content}} object, got {turn!r:.80}")
        # only role and content: other keys (name, tool_calls, ...) would change some templates
        messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def _check_messages(messages: list[dict[str, Any]], where: str, require_assistant: bool) -> None:
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has role {role!r}; roles must be one of "
                            f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} ({role}) content must be a string, "
                            f"got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise DataError(f"{where}: message {i} is an empty assistant turn (empty output); "
                            f"drop the record or fill in the response")
    if messages[0]["role"] == "assistant":  # nothing to render as its prompt
        raise DataError(f"{where} opens with an assistant turn; start the conversation with a user "
                        f"(or system) turn")
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where} has no assistant turn, so nothing to train on; add the response "
                        f"(an assistant message or the output column)")


def _apply(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, Any]],
           generation_prompt: bool, where: str) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as error:  # the template's own raise_exception(), e.g. roles must alternate
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{where}: the chat template rejected the conversation ({first}); fix the record "
                        f"or set task.chat_template=chatml") from error
    assert isinstance(text, str)
    return text


def render(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, Any]], *,
           where: str = "record") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of each assistant turn's
    content with its end-of-turn marker (`<|im_end|>`, eos, ...), without trailing whitespace."""
    if messages and messages[0]["role"] == "assistant":
        raise DataError(f"{where} opens with an assistant turn; start the conversation with a user "
                        f"(or system) turn")
    full = _apply(tokenizer, template, messages, False, where)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _apply(tokenizer, template, messages[:k], True, where)
        upto = _apply(tokenizer, template, messages[:k + 1], False, where)
        end = len(upto.rstrip())
        if not (full.startswith(prefix) and full.startswith(upto)) or end <= len(prefix):
            raise ConfigError("the chat template is not prefix-stable (it rewrites earlier turns); "
                              "set task.chat_template=chatml (or alpaca, or a prefix-stable Jinja template)")
        spans.append((len(prefix), end))
    return full, spans


def prompt_text(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, Any]], *,
                where: str = "record") -> str:
    """Everything before the last assistant turn plus the generation prompt: what generation
    starts from (a chat with no assistant turn: all of it plus the generation prompt)."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    if last == 0:
        raise DataError(f"{where} opens with an assistant turn; start the conversation with a user "
                        f"(or system) turn")
    return _apply(tokenizer, template, messages[:last], True, where)


def tokenize_with_labels(tokenizer: PreTrainedTokenizerBase, text: str, spans: list[tuple[int, int]],
                         max_length: int, train_on_prompt: bool = False
                         ) -> tuple[list[int], list[int]] | None:
    """input_ids of `text` (no added special tokens: the template carries them), cut to
    `max_length`, and labels already shifted: labels[i] = input_ids[i + 1] when token i + 1
    overlaps an assistant span (every token with `train_on_prompt`), else -100; the last is -100.
    None when no label survives the cut."""
    if not tokenizer.is_fast:
        raise ConfigError(f"the tokenizer of {_model_name(tokenizer)} is a slow (Python) tokenizer, which "
                          f"has no character offsets; use a model with a fast tokenizer (tokenizer.json)")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # cut here, not with truncation=True, so the tokenizer's truncation_side cannot drop the start
    ids = list(encoding["input_ids"][:max_length])
    offsets = encoding["offset_mapping"][:max_length]
    if train_on_prompt:
        trained = [True] * len(ids)
    else:
        # a token is trained when any of its characters is in a span; a zero-width token
        # (rare) counts as one character wide so it can still be inside one
        trained = [any(start < span_end and max(end, start + 1) > span_start
                       for span_start, span_end in spans) for start, end in offsets]
    labels = [ids[i + 1] if trained[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)]
    labels.append(IGNORE_INDEX)  # nothing follows the last token
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return ids, labels
