"""Known chat formats, for models whose files carry no template (the Gemma 3 270M on PyPI has
none). Each is a Jinja template over OpenAI-shaped messages, rendered by templates.render_jinja.

Formats without a system role (Gemma, Mistral, Llama 2) fold the system prompt into the first
user turn, as their official templates do: it is never dropped.
"""

from __future__ import annotations

# Gemma 1-3: turns of user/model; the system text opens the first user turn.
GEMMA = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = ns.system + m.content + '\n\n' -%}
{%- else -%}
<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}
{% if m.role == 'user' and ns.system %}{{ ns.system }}{% set ns.system = '' %}{% endif -%}
{{ m.content | trim }}<end_of_turn>
{% endif -%}
{%- endfor -%}
{%- if ns.system -%}<start_of_turn>user
{{ ns.system | trim }}<end_of_turn>
{% endif -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}"""

# ChatML (Qwen 2/2.5/3, StarCoder2 instruct, many fine-tunes); also the default.
CHATML = """{%- for m in messages -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"""

LLAMA3 = """{{ bos_token }}
{%- for m in messages -%}
<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>

{{ m.content | trim }}<|eot_id|>
{%- endfor -%}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif -%}"""

MISTRAL = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = ns.system + m.content + '\n\n' -%}
{%- elif m.role == 'assistant' -%}{{ ' ' + m.content | trim }}{{ eos_token }}
{%- else -%}[INST] {{ ns.system }}{% set ns.system = '' %}{{ m.content | trim }} [/INST]
{%- endif -%}
{%- endfor -%}"""

PHI3 = """{%- for m in messages -%}
<|{{ m.role }}|>
{{ m.content }}<|end|>
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>
{% endif -%}"""

LLAMA2 = """{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = '<<SYS>>\n' + m.content + '\n<</SYS>>\n\n' -%}
{%- elif m.role == 'assistant' -%}{{ ' ' + m.content | trim + ' ' }}{{ eos_token }}
{%- else -%}{{ bos_token }}[INST] {{ ns.system }}{% set ns.system = '' %}{{ m.content | trim }} [/INST]
{%- endif -%}
{%- endfor -%}"""

DEEPSEEK_CODER = """{{ bos_token }}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{{ m.content }}
{% elif m.role == 'assistant' -%}### Response:
{{ m.content }}
<|EOT|>
{% else -%}### Instruction:
{{ m.content }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}### Response:
{% endif -%}"""

BUILTIN = {
    "gemma": GEMMA,
    "chatml": CHATML,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "phi3": PHI3,
    "llama2": LLAMA2,
    "deepseek-coder": DEEPSEEK_CODER,
}

# GGUF general.architecture / config.json model_type -> format.
_BY_ARCH = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "qwen2moe": "chatml",
    "starcoder2": "chatml",
    "phi3": "phi3",
    "phi2": "chatml",
    "mistral": "mistral",
    "mistral3": "mistral",
    "deepseek": "deepseek-coder",
    "deepseek2": "deepseek-coder",
}


def template_for(architecture: str, bos_token: str) -> str:
    """The fallback format for an architecture. "llama" covers Llama 2, CodeLlama and Llama 3:
    Llama 3's BOS token is `<|begin_of_text|>`, Llama 2's is `<s>`."""
    arch = architecture.lower()
    if arch == "llama":
        return "llama3" if bos_token == "<|begin_of_text|>" else "llama2"
    return _BY_ARCH.get(arch, "chatml")
