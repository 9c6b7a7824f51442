"""The tiny model: built by the CLI, loaded offline, runs forward/generate, round-trips through save/load."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.models import Family, family_of, load_model_and_processor
from grounded_rl.tiny import FORMAT_TOKENS, SPECIAL_TOKENS

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tiny_model_dir):
    """(family, model, processor) loaded from the session's tiny checkpoint, in eval mode."""
    model, processor = load_model_and_processor(tiny_model_dir(request.param))
    return request.param, model.eval(), processor


def _batch(processor):
    """Two chats of different lengths, each with an image of its own size, left-padded into one batch."""
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the mug?"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}],
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    images = [Image.new("RGB", (517, 389), (255, 0, 0)), Image.new("RGB", (300, 200), (0, 0, 255))]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_writes_a_loadable_safetensors_checkpoint(family, tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "tiny"
    result = CliRunner().invoke(app, ["make-tiny-model", str(out), "--family", family, "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "wrote tiny" in result.output
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert family_of(out) is Family(family)
    # Same seed, same weights as the session fixture (built through the library, not the CLI).
    ours, reference = (
        load_file(out / "model.safetensors"),
        load_file(tiny_model_dir(family) / "model.safetensors"),
    )
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_model_config_matches_tokenizer(loaded):
    family, model, processor = loaded
    tokenizer = processor.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 600_000, n_params
    config = model.config
    assert (
        config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    )
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    # Byte-level: any text round-trips, one token per byte; format tags are single, non-special tokens.
    text = "<think> Ünïcødé (12, 34) </think>\n<tool_call>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(" Ünïcødé (12, 34) \n".encode()) + 3  # bytes + <think>, </think>, <tool_call>
    special = set(tokenizer.all_special_tokens)
    assert set(SPECIAL_TOKENS) <= special and not set(FORMAT_TOKENS) & special
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_forward_on_an_image_text_batch(loaded):
    import torch

    family, model, processor = loaded
    inputs = _batch(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_save_and_reload_gives_identical_logits(loaded, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    family, model, processor = loaded
    inputs = _batch(processor)
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


def test_generate_eight_tokens(loaded):
    import torch

    family, model, processor = loaded
    inputs = _batch(processor)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=True)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert int(out.max()) < len(processor.tokenizer)  # the vocabulary is unpadded: every sample decodes


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from grounded_rl.cli import app\n"
        "for args in (['--help'], ['make-tiny-model', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'make-tiny-model' in CliRunner().invoke(app, ['--help']).output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
