"""The exported folder's text side: tokenizer, chat template (Jinja), processor settings.

`processor.apply_chat_template` on the standard message format
`[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}]` with
`add_generation_prompt=True` must write exactly what vlmtool trained on. vlmtool reads a content
list as its parts joined, an image part becoming `<image>\\n` (vlm/tokenizer.py `_content_text`),
and puts `<image>\\n` before the first user text when the image has no placeholder; then

- the bundled LM renders `<|bos|>` + per message (`<|user|>` | `<|assistant|>` | nothing for a
  system message) + content + `<|end|>`, + `<|assistant|>` for the generation prompt
  (BundledTokenizer.render);
- an hf LM renders with its own chat template (content as a string) when it has one, else
  vlmtool's fallback (HFTokenizer.render).

The Jinja below does the same: content lists are flattened to strings first, then the same
rendering. The processor expands the one `<image>` into the tower's token count.
"""

from __future__ import annotations

from vlmtool.vlm.tokenizer import ASSISTANT, BOS, END, EOS, IMAGE, IMAGE_NEWLINE, PAD, USER

# content lists -> strings, image parts as "<image>\n" (vlm/tokenizer.py _content_text); then the
# rendering template sees `messages` with string contents
FLATTEN = ("{%- set ns = namespace(msgs=[]) -%}{%- for m in messages -%}{%- if m['content'] is string -%}"
           "{%- set ns.msgs = ns.msgs + [m] -%}{%- else -%}{%- set p = namespace(t='') -%}{%- for c in m['content'] -%}"
           "{%- if c['type'] == 'image' -%}{%- set p.t = p.t + '" + IMAGE + "\\n' -%}"
           "{%- elif c['type'] == 'text' -%}{%- set p.t = p.t + c['text'] -%}{%- endif -%}{%- endfor -%}"
           "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': p.t}] -%}{%- endif -%}{%- endfor -%}"
           "{%- set messages = ns.msgs %}")

BUNDLED = ("{{- '" + BOS + "' -}}{%- for m in messages -%}"
           "{%- if m['role'] == 'user' -%}{{- '" + USER + "' -}}{%- elif m['role'] == 'assistant' -%}{{- '" + ASSISTANT + "' -}}"
           "{%- endif -%}{{- m['content'] -}}{{- '" + END + "' -}}{%- endfor -%}"
           "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}")


def fallback_template() -> str:
    """vlm/hf.py FALLBACK_ROLES rendering, for an hf tokenizer without a chat template."""
    from vlmtool.vlm.hf import FALLBACK_ROLES

    def tag(role):
        return FALLBACK_ROLES[role].replace("\n", "\\n")

    return ("{{- bos_token or '' -}}{%- for m in messages -%}"
            "{%- if m['role'] == 'system' -%}{{- '" + tag("system") + "' -}}{%- elif m['role'] == 'user' -%}{{- '" + tag("user") +
            "' -}}{%- else -%}{{- '" + tag("assistant") + "' -}}{%- endif -%}{{- m['content'] -}}"
            "{%- if m['role'] == 'assistant' -%}{{- eos_token or '' -}}{%- endif -%}{{- '\\n' -}}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '" + tag("assistant") + "' -}}{%- endif -%}")


def chat_template(tokenizer) -> str:
    """The exported Jinja chat template for a checkpoint's tokenizer (BundledTokenizer or HFTokenizer)."""
    if not hasattr(tokenizer, "has_template"):
        return FLATTEN + BUNDLED
    if tokenizer.has_template:
        return FLATTEN + tokenizer.tok.chat_template
    return FLATTEN + fallback_template()


def hf_tokenizer(src):
    """A transformers fast tokenizer for the checkpoint, with the chat template set."""
    tok = src.ck.tokenizer
    if hasattr(tok, "has_template"):  # an hf LM: its own tokenizer, `<image>` tokens already added
        from transformers import AutoTokenizer

        out = AutoTokenizer.from_pretrained(str(src.ck.path / "lm"))
    else:
        from transformers import PreTrainedTokenizerFast

        out = PreTrainedTokenizerFast(tokenizer_object=tok.tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                      additional_special_tokens=[USER, ASSISTANT, END, IMAGE, IMAGE_NEWLINE])
    out.chat_template = chat_template(tok)
    return out


def image_processor(src):
    """A CLIPImageProcessor with open_clip's eval transform: shortest side to S then centre crop
    S x S (resize_mode shortest), or straight to S x S (squash); the tower's mean, std and
    interpolation."""
    from transformers import CLIPImageProcessor

    from vlmtool.export_model.convert import INTERPOLATION

    pp = src.clip.preprocess
    common = {"resample": INTERPOLATION[pp.interpolation], "image_mean": list(pp.mean), "image_std": list(pp.std),
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}
    if pp.resize_mode == "squash":
        return CLIPImageProcessor(size={"height": pp.size, "width": pp.size}, do_center_crop=False, **common)
    return CLIPImageProcessor(size={"shortest_edge": pp.size}, crop_size={"height": pp.size, "width": pp.size},
                              do_center_crop=True, **common)


def processor(src, vision_config):
    from transformers import LlavaProcessor

    tok = hf_tokenizer(src)
    return LlavaProcessor(image_processor=image_processor(src), tokenizer=tok, patch_size=vision_config.patch_size,
                          vision_feature_select_strategy="full" if src.cls else "default", chat_template=tok.chat_template,
                          image_token=IMAGE, num_additional_image_tokens=1)
