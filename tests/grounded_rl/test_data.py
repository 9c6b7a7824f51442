"""The model's view of trace rows, whole-turn fitting, assistant-only labels and the image-token guard."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

from grounded_rl.data import (
    GroundedCollator,
    drop_unfit,
    fit_turns,
    image_token_count,
    model_chat,
    model_view,
)
from grounded_rl.models import Family, geometry_for
from trace_forge.card import Provenance
from trace_forge.dataset import PIXEL_VIEW, TraceRow, load_traces, write_rows
from trace_forge.errors import DataError
from trace_forge.grounding import Frame, Point, Step, View
from trace_forge.linearize import Chain, ChainSource, plan_zooms
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.tasks.prompts import NORM1000_HINT, TEMPLATES

COLOURS = ["red", "green", "blue", "white"]


# ---------------------------------------------------------------------------------------------------------------
# Trace rows made by trace-forge's own row encoder (shared with test_sft.py)
# ---------------------------------------------------------------------------------------------------------------


def make_canvas(seed: int, size: tuple[int, int] = (224, 168)) -> Image.Image:
    """A deterministic picture: a coloured background with a few rectangles."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        draw.rectangle((x, y, x + 20, y + 20), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def make_trace(seed: int, mode: str = "multi", n_steps: int = 2, size: tuple[int, int] = (224, 168),
               view: View = PIXEL_VIEW) -> TraceRow:
    """A decoded trace row of a random grounded chain on a V* question, written in ``view``."""
    rng = random.Random(seed)
    canvas = make_canvas(seed, size)
    steps = tuple(
        Step(f"The {rng.choice(COLOURS)} square is here", Point(rng.uniform(10, size[0] - 10),
                                                                 rng.uniform(10, size[1] - 10)))
        for _ in range(n_steps)
    )
    answer = rng.choice(COLOURS)
    chain = Chain(f"q{seed}", "direct", steps, answer, True, 1.0, (1.0,), ChainSource(0, (0,)))
    sample = Sample(f"q{seed}", "vstar", [], "What colour is the square?", AnswerKind.OPTION, COLOURS, answer,
                    category="direct_attributes")
    row = TraceRow(sample=sample, task=TaskSpec("vstar"), mode=mode, view=PIXEL_VIEW, image_size=size, chain=chain,
                   zoom_steps=plan_zooms(steps, 4) if mode == "multi" else (), images=(canvas,),
                   teacher="sim:test", simulated=True)
    return row.in_view(view, canvas=canvas)  # cuts the crops, in the view's frame


def make_row(seed: int, mode: str = "multi", n_steps: int = 2, size: tuple[int, int] = (224, 168),
             view: View = PIXEL_VIEW, system: str | None = None) -> dict:
    """A stored row (all columns); ``system`` replaces the system prompt text (training tests use a short one: every
    byte is a token with the tiny tokenizer), which a model reads as stored when ``view`` is its own."""
    row = make_trace(seed, mode, n_steps, size, view).to_row()
    if system is not None:
        row["messages"][0]["content"][0]["text"] = system
    return row


def write_traces(rows_by_split: dict[str, list[dict]], folder: Path) -> Path:
    """Rows written as a dataset folder, one question per row."""
    provenance = Provenance(task=TaskSpec("vstar").to_dict(), teacher={"backend": "sim", "model": "test"})
    questions = ((split, [row]) for split, rows in rows_by_split.items() for row in rows)
    write_rows(questions, folder, mode="multi", provenance=provenance)
    return folder


@pytest.fixture(scope="module")
def processor(tiny_qwen2_5_vl_dir):
    return AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)


def _texts(messages: list[dict], role: str) -> list[str]:
    return [p["text"] for m in messages if m["role"] == role for p in m["content"] if p["type"] == "text"]


# ---------------------------------------------------------------------------------------------------------------
# The model's view
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_pixel_rows_are_re_rendered_in_the_family_frame_from_their_steps(tiny_model_dir, family):
    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    row = make_row(3, "multi", n_steps=3, size=(517, 389))
    geometry = geometry_for(processor, 517, 389)
    frame = Family(family).frame
    messages, images, sizes = model_chat(row, model_view(processor, family))

    assistant, user = " ".join(_texts(messages, "assistant")), " ".join(_texts(messages, "user"))
    for raw in row["steps"]:
        point = Point(raw["x"], raw["y"])
        old, new = point.rounded(), point.to(frame, geometry).rounded()  # from the float point, not the literal
        assert old != new  # the frames differ at this size, so a missed rewrite would show
        assert f"({new[0]}, {new[1]})" in assistant  # inline literal
        assert f"({old[0]}, {old[1]})" not in assistant
    for i in row["zoom_steps"]:
        new = Point(row["steps"][i]["x"], row["steps"][i]["y"]).to(frame, geometry).rounded()
        assert f'"point": [{new[0]}, {new[1]}]' in assistant  # zoom call JSON
        assert f"({new[0]}, {new[1]})" in user  # observation text
    assert len(images) == len(row["images"]) and sizes == [im.size for im in images]
    system = _texts(messages, "system")[0]
    if frame is Frame.NORM1000:
        assert NORM1000_HINT in system and TEMPLATES["pixel_coordinates"] not in system
    else:
        assert system == _texts(row["messages"], "system")[0]


def test_rows_written_in_the_models_view_are_used_as_stored(processor):
    view = model_view(processor, "qwen2_5_vl")
    row = make_row(4, "multi", view=view, system="A custom system prompt.")
    messages, images, _ = model_chat(row, view)
    assert messages == row["messages"] and images == row["images"]  # what plain TRL trains on, edits kept
    assert model_chat(make_row(4, "multi"), view)[0] == make_trace(4, "multi", view=view).messages()


# ---------------------------------------------------------------------------------------------------------------
# Fitting, labels, alignment guard
# ---------------------------------------------------------------------------------------------------------------


def _encoded_length(processor, messages, images) -> int:
    from trl.data_utils import prepare_multimodal_messages

    chat = prepare_multimodal_messages(messages, images)
    out = processor.apply_chat_template([chat], tokenize=True, return_dict=True)
    return len(out["input_ids"][0])


def _chat(row, processor):
    return model_chat(row, model_view(processor, "qwen2_5_vl"))


def test_fit_turns_counts_tokens_exactly_and_cuts_only_after_assistant_turns(processor):
    messages, images, sizes = _chat(make_row(5, "multi", n_steps=3, size=(300, 260)), processor)
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant"]
    full = _encoded_length(processor, messages, images)
    assert fit_turns(messages, sizes, processor, full) == len(messages)
    assert fit_turns(messages, sizes, processor, None) == len(messages)
    for keep in (7, 5, 3):  # after each earlier assistant turn
        n_images = sum(p["type"] == "image" for m in messages[:keep] for p in m["content"])
        exact = _encoded_length(processor, messages[:keep], images[:n_images])
        assert fit_turns(messages, sizes, processor, exact) == keep
        assert fit_turns(messages, sizes, processor, exact - 1) == (keep - 2 if keep > 3 else None)
    assert image_token_count(processor, *images[1].size) == 256  # a 672 x 672 crop, capped at 256 tokens


def test_collator_labels_exactly_the_assistant_tokens(processor):
    rows = [make_row(7, "multi"), make_row(8, "single")]
    batch = GroundedCollator(processor, "qwen2_5_vl")(rows)
    tok = processor.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    for ids, mask, labels, row in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], rows,
                                      strict=True):
        ids, labels = ids.tolist(), labels.tolist()
        # Reference mask from the token stream: after "<|im_start|>assistant\n" up to and including <|im_end|>.
        expected, inside = [], False
        for i, t in enumerate(ids):
            if t == im_start and ids[i + 1 : i + 1 + len(header)] == header:
                start = i + 1 + len(header)
                inside = True
            expected.append(inside and i >= start and bool(mask[i]))
            if t == im_end:
                inside = False
        assert [lab != -100 for lab in labels] == expected
        assert all(lab == ids[i] for i, lab in enumerate(labels) if lab != -100)
        trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        messages = _chat(row, processor)[0]
        assert trained == "".join(t + "<|im_end|>" for t in _texts(messages, "assistant"))
        masked = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
        for text in _texts(messages, "user") + _texts(messages, "system"):
            assert text in masked
        assert not any(lab != -100 and t == processor.image_token_id for t, lab in zip(ids, labels, strict=True))


def test_guard_truncates_whole_turns_drops_unfit_rows_and_the_batch_trains(processor, tiny_qwen2_5_vl_dir, caplog):
    long_row, short_row = make_row(11, "multi", n_steps=3, size=(300, 260)), make_row(12, "single")
    messages, images, _ = _chat(long_row, processor)
    # Room for the first two zoom turns but not the third zoom turn nor the answer.
    max_length = _encoded_length(processor, messages[:5], images[:2]) + 3
    collator = GroundedCollator(processor, "qwen2_5_vl", max_length=max_length)
    with caplog.at_level(logging.INFO, logger="grounded_rl.data"):
        batch = collator([long_row, short_row])
    assert collator.stats == {"samples": 2, "truncated": 1, "turns_dropped": 4, "images_dropped": 2}
    assert "dropped the last 4 turns (2 images)" in caplog.text
    # Kept: canvas + first crop of the long row, canvas of the short row; no image is cut.
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert (batch["input_ids"] == vision_start).sum(dim=1).tolist() == [2, 1]
    assert batch["image_grid_thw"].shape[0] == 3
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=-1).sum())
    assert batch["attention_mask"].sum(dim=1).max() <= max_length
    kept_text = processor.tokenizer.decode(batch["input_ids"][0])
    assert kept_text.rstrip().endswith("</tool_call><|im_end|>")  # ends after a whole assistant turn

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl_dir)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    # A row that cannot fit even with its first assistant turn is dropped and counted; an all-dropped batch raises.
    tiny = GroundedCollator(processor, "qwen2_5_vl", max_length=40)
    with pytest.raises(DataError, match="every sample of a batch"):
        tiny([long_row])
    assert tiny.stats["dropped"] == 1
    mixed = GroundedCollator(processor, "qwen2_5_vl", max_length=max_length)
    only_short = _encoded_length(processor, *_chat(short_row, processor)[:2])
    mixed.max_length = only_short
    out = mixed([long_row, short_row])
    assert mixed.stats["dropped"] == 1 and out["input_ids"].shape[0] == 1


def test_alignment_check_catches_a_missing_image_token(processor):
    collator = GroundedCollator(processor, "qwen2_5_vl")
    batch = collator([make_row(13, "multi")])
    ids = batch["input_ids"].clone()
    first_pad = int((ids[0] == processor.image_token_id).nonzero()[0])
    ids[0, first_pad] = processor.tokenizer.pad_token_id
    with pytest.raises(DataError, match="image placeholder tokens for"):
        collator.check_alignment({**batch, "input_ids": ids}, ["q13"])


def test_drop_unfit_filters_rows_before_training(tmp_path, processor):
    rows = [make_row(20, "multi", n_steps=3), make_row(21, "single"), make_row(22, "multi")]
    dataset = load_traces(write_traces({"train": rows}, tmp_path / "traces"))
    budget = _encoded_length(processor, *_chat(rows[1], processor)[:2])
    kept, counts = drop_unfit(dataset, processor, "qwen2_5_vl", budget)
    fits = [fit_turns(*_chat(r, processor)[::2], processor, budget) for r in rows]
    assert counts["rows"] == 3 and counts["dropped"] == sum(f is None for f in fits) >= 1
    assert [r["question_id"] for r in kept] == [r["question_id"] for r, f in zip(rows, fits, strict=True) if f]
    assert drop_unfit(dataset, processor, "qwen2_5_vl", None)[0] is dataset
