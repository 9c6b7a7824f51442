"""Write the tiny random Qwen2.5-VL that a CPU vLLM server can serve, for ``scripts/real_vllm_check.sh``.

It is grounded-rl's tiny model (:mod:`grounded_rl.tiny`: byte-level tokenizer, our chat template, small image
bounds) with one change: vLLM's CPU attention rejects head_dim 16, so the text model has two heads over hidden 64
(head_dim 32) and M-RoPE sections ``[4, 6, 6]`` (their sum must be head_dim / 2). tiny.py's defaults stay as they
are; the change is made on the config here.

Run with the workspace environment (it has torch and transformers)::

    uv run python scripts/vllm_tiny_model.py /work/vllm-model
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, GenerationConfig

from grounded_rl.models import Family
from grounded_rl.tiny import _tiny_config, build_tiny_processor

HEADS = 2  # hidden 64 / 2 heads = head_dim 32, the smallest vLLM's CPU attention takes
MROPE_SECTION = [4, 6, 6]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor(Family.QWEN2_5_VL)
    tokenizer = processor.tokenizer
    config = _tiny_config(Family.QWEN2_5_VL, tokenizer)
    text = config.text_config
    text.num_attention_heads = HEADS
    text.num_key_value_heads = HEADS
    text.head_dim = text.hidden_size // HEADS
    text.rope_parameters["mrope_section"] = MROPE_SECTION
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    model.generation_config = GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext,
                                               bos_token_id=endoftext, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    print(f"wrote {out}: head_dim {text.head_dim}, mrope_section {MROPE_SECTION}, vocab {config.text_config.vocab_size}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/vllm-model"))
