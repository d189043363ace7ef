"""The C++ chat template renderer against the checkpoints' own Jinja templates.

Each template is rendered with jinja2 the way transformers' apply_chat_template does
(sandboxed environment, trim_blocks, lstrip_blocks, a tojson filter and raise_exception;
`enable_thinking` passed only when the caller sets it) and the C++ rendering must be equal
byte for byte.

Templates come from ``tests/assets/`` (Qwen3, Qwen2.5, MiniCPM-o 4.5), plus variants built
here: a Qwen2.5 template with another default system text, Qwen3 templates that default
enable_thinking to false or open a think block in the generation prompt (when thinking is
not switched off, or always), a Qwen2-style
template (default system turn, every role as its own turn) and plain ChatML.
"""

import json

import pytest

jinja2 = pytest.importorskip("jinja2")
from jinja2.exceptions import TemplateError  # noqa: E402
from jinja2.ext import loopcontrols  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

import tiny_models  # noqa: E402


def _read_asset(rel):
    return (tiny_models.assets_dir() / rel).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

QWEN25_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Plain ChatML, the reference for empty or unrecognised template sources.
CHATML_REFERENCE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2-style: a default system turn when the first message is not a system one, and every
# message (tool results included) as its own ChatML turn.
QWEN2_STYLE = (
    "{% for m in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A template in another format altogether: not recognised, so plain ChatML.
UNRECOGNISED = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
)

GEN_PROMPT_OFF = (
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
)


def _qwen3():
    return _read_asset("templates/Qwen-Qwen3-0.6B.jinja")


def _minicpm_o45():
    text = _read_asset("tokenizer/minicpm-o-4_5/tokenizer_config.json")
    return json.loads(text)["chat_template"]


def _qwen25():
    return _read_asset("templates/Qwen-Qwen2.5-7B-Instruct.jinja")


def _qwen25_other_default():
    src = _qwen25()
    assert QWEN25_DEFAULT in src
    # Escapes in the literal (\n, \') must be decoded the way Jinja does.
    return src.replace(QWEN25_DEFAULT, "Du bist ein hilfreicher Assistent.\\nIt\\'s 2025, sei kurz.")


def _qwen3_default_off():
    return "{%- set enable_thinking = enable_thinking | default(false) %}\n" + _qwen3()


def _qwen3_open_think():
    src = _qwen3()
    assert GEN_PROMPT_OFF in src
    opened = (
        "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
        "    {%- else %}\n"
        "        {{- '<think>\\n' }}\n"
        "    {%- endif %}\n"
    )
    return src.replace(GEN_PROMPT_OFF, opened)


def _qwen3_always_think():
    # A thinking-only model: the generation prompt always opens the think block.
    src = _qwen3()
    assert GEN_PROMPT_OFF in src
    return src.replace(GEN_PROMPT_OFF, "    {{- '<think>\\n' }}\n")


# name -> (C++ source, Jinja reference source, expected family)
def _template(name):
    if name == "qwen3":
        src = _qwen3()
        return src, src, "qwen3"
    if name == "minicpm-o-4_5":
        src = _minicpm_o45()
        return src, src, "qwen3"
    if name == "qwen3-default-off":
        src = _qwen3_default_off()
        return src, src, "qwen3"
    if name == "qwen3-open-think":
        src = _qwen3_open_think()
        return src, src, "qwen3"
    if name == "qwen3-always-think":
        src = _qwen3_always_think()
        return src, src, "qwen3"
    if name == "qwen2.5":
        src = _qwen25()
        return src, src, "qwen2.5"
    if name == "qwen2.5-other-default":
        src = _qwen25_other_default()
        return src, src, "qwen2.5"
    if name == "qwen2":
        return QWEN2_STYLE, QWEN2_STYLE, "qwen2"
    if name == "chatml-empty":
        return "", CHATML_REFERENCE, "chatml"
    if name == "chatml-unrecognised":
        return UNRECOGNISED, CHATML_REFERENCE, "chatml"
    raise KeyError(name)


TEMPLATES = [
    "qwen3",
    "minicpm-o-4_5",
    "qwen3-default-off",
    "qwen3-open-think",
    "qwen3-always-think",
    "qwen2.5",
    "qwen2.5-other-default",
    "qwen2",
    "chatml-empty",
    "chatml-unrecognised",
]


# ---------------------------------------------------------------------------------------------
# Reference rendering (as transformers does it)
# ---------------------------------------------------------------------------------------------


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
_ENV.filters["tojson"] = _tojson
_ENV.globals["raise_exception"] = _raise_exception


def render_reference(source, messages, add_generation_prompt=True, enable_thinking=None):
    kwargs = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return _ENV.from_string(source).render(**kwargs)


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------


def _u(text):
    return {"role": "user", "content": text}


def _a(text, reasoning=...):
    m = {"role": "assistant", "content": text}
    if reasoning is not ...:
        m["reasoning_content"] = reasoning
    return m


def _s(text):
    return {"role": "system", "content": text}


def _t(text):
    return {"role": "tool", "content": text}


CONVERSATIONS = {
    "single_user": [_u("Hello!")],
    "system_user": [_s("You are a terse assistant."), _u("What is 2+2?")],
    "multi_turn": [_u("Hi"), _a("Hello, how can I help?"), _u("Tell me a joke.")],
    "system_multi_turn": [
        _s("Answer in one sentence."),
        _u("What is the capital of France?"),
        _a("Paris."),
        _u("And of Italy?"),
        _a("Rome."),
        _u("And of Spain?"),
    ],
    "think_in_history": [
        _u("Compute 3*7."),
        _a("<think>\n3 times 7 is 21.\n</think>\n\n21"),
        _u("Now add 1."),
    ],
    "think_in_last_turn": [
        _u("Compute 3*7."),
        _a("<think>\n3 times 7 is 21.\n</think>\n\n21"),
    ],
    "think_close_only": [
        _u("Why?"),
        _a("Because the reasons stack up.\n</think>\n\nBecause."),
        _u("Really?"),
        _a("thinking without an opening tag</think>Yes."),
    ],
    "think_repeated_tags": [
        _u("q"),
        _a("<think>a</think>b<think>c\n\n</think>\n\nd"),
    ],
    "think_messy_newlines": [
        _u("q"),
        _a("\n\n<think>\n\n\nstep one\nstep two\n\n</think>\n\n\n\nanswer\n\n"),
    ],
    "reasoning_field_last": [_u("Capital of Japan?"), _a("Tokyo.", reasoning="Japan's capital is Tokyo.")],
    "reasoning_field_newlines": [
        _u("Capital of Japan?"),
        _a("\n\nTokyo.\n", reasoning="\n\nJapan's capital\nis Tokyo.\n\n"),
    ],
    "reasoning_field_history": [
        _u("Capital of Japan?"),
        _a("Tokyo.", reasoning="\nJapan's capital is Tokyo.\n"),
        _u("Population?"),
    ],
    "reasoning_field_empty": [_u("Hi"), _a("\n\nHello.", reasoning="")],
    "reasoning_field_overrides_tags": [
        _u("q"),
        _a("<think>inline</think>visible", reasoning="from the field"),
    ],
    "reasoning_field_none": [_u("q"), _a("<think>\ninline\n</think>\n\nvisible", reasoning=None)],
    "last_assistant_plain": [_u("Say hi."), _a("hi")],
    "tool_round_trip": [
        _s("You can call tools."),
        _u("Weather in Paris and Rome?"),
        _a("<think>\nNeed both cities.\n</think>\n\nLet me check."),
        _t('{"city": "Paris", "temp": 18}'),
        _t('{"city": "Rome", "temp": 24}'),
        _a("I have both.", reasoning="Compare the two temperatures."),
        _t('{"note": "third result"}'),
        _a("Paris is 18 C and Rome is 24 C."),
    ],
    "tool_then_generate": [
        _u("Look it up."),
        _a("Calling the tool."),
        _t("result one"),
        _t("result two"),
        _t("result three"),
    ],
    "tool_first": [_t("orphan result"), _u("What did the tool say?")],
    "user_wrapped_tool_response": [
        _u("Real question"),
        _a("<think>r1</think>calling"),
        _u("<tool_response>\n42\n</tool_response>"),
        _a("<think>r2</think>The answer is 42."),
    ],
    "user_half_wrapped_tool_response": [
        _u("Real question"),
        _a("<think>r1</think>calling"),
        _u("<tool_response>\n42 (not closed)"),
        _a("<think>r2</think>The answer is 42."),
    ],
    "user_half_closed_tool_response": [
        _u("Real question"),
        _a("<think>r1</think>calling"),
        _u("42 </tool_response>"),
        _a("<think>r2</think>Still 42."),
    ],
    "no_user_query": [_s("System only."), _a("<think>r</think>Unprompted."), _a("Second.")],
    "system_not_first": [_u("Hi"), _a("Hello"), _s("From now on answer in French."), _u("How are you?")],
    "unicode_newlines": [
        _s("Réponds en français.\nSois bref."),
        _u("Grüße aus München! 你好，世界。\nПривет\tмир ∑∫√"),
        _a("<think>\nL'utilisateur salue en plusieurs langues.\n</think>\n\nBonjour à vous aussi !\n"),
        _u("Merci\r\nbeaucoup\n\n"),
    ],
    "empty_contents": [_s(""), _u(""), _a(""), _u("")],
    "empty_user_only": [_u("")],
    "special_tokens_in_text": [_u("Print <|im_start|> and <|im_end|> literally, and <think> too.")],
}

OPTIONS = [
    # (add_generation_prompt, enable_thinking)
    (True, None),
    (True, True),
    (True, False),
    (False, None),
    (False, False),
]


def _opt_id(opt):
    add, think = opt
    return f"gen{int(add)}-think{'u' if think is None else int(think)}"


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mc():
    import minicpm_cpp

    return minicpm_cpp


@pytest.mark.parametrize("name", TEMPLATES)
def test_family(mc, name):
    cpp_src, _, family = _template(name)
    assert mc.ChatTemplate(cpp_src).family == family


@pytest.mark.parametrize("opt", OPTIONS, ids=_opt_id)
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_matches_jinja(mc, name, conv, opt):
    cpp_src, ref_src, _ = _template(name)
    messages = CONVERSATIONS[conv]
    add, think = opt
    expected = render_reference(ref_src, messages, add_generation_prompt=add, enable_thinking=think)
    got = mc.ChatTemplate(cpp_src).render(messages, add_generation_prompt=add, enable_thinking=think)
    assert got == expected


def test_render_defaults(mc):
    # add_generation_prompt defaults to True and enable_thinking to unset.
    src = _qwen3()
    messages = CONVERSATIONS["multi_turn"]
    assert mc.ChatTemplate(src).render(messages) == render_reference(src, messages)


def test_qwen25_default_system_from_template(mc):
    out = mc.ChatTemplate(_qwen25()).render([_u("Hi")])
    assert out.startswith("<|im_start|>system\n" + QWEN25_DEFAULT + "<|im_end|>\n")
    out = mc.ChatTemplate(_qwen25_other_default()).render([_u("Hi")])
    assert out.startswith("<|im_start|>system\nDu bist ein hilfreicher Assistent.\nIt's 2025, sei kurz.<|im_end|>\n")


def test_qwen3_generation_prompt(mc):
    tmpl = mc.ChatTemplate(_minicpm_o45())
    conv = [_u("Hi")]
    assert tmpl.render(conv).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tmpl.render(conv, enable_thinking=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tmpl.render(conv, enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not tmpl.render(conv, add_generation_prompt=False).endswith("assistant\n")


def test_chatml_has_no_default_system(mc):
    assert mc.ChatTemplate("").render([_u("x")]) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", TEMPLATES)
def test_unknown_role_is_an_error(mc, name):
    cpp_src, _, _ = _template(name)
    with pytest.raises(mc.Error, match="role"):
        mc.ChatTemplate(cpp_src).render([_u("Hi"), {"role": "bot", "content": "beep"}])


@pytest.mark.parametrize("name", TEMPLATES)
def test_empty_messages_is_an_error(mc, name):
    cpp_src, _, _ = _template(name)
    with pytest.raises(mc.Error, match="empty"):
        mc.ChatTemplate(cpp_src).render([])
