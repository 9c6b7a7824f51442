"""Trace loading, point rewriting, whole-turn fitting, assistant-only labels and the image-token guard."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

from grounded_rl.data import (
    GroundedCollator,
    drop_unfit,
    fit_turns,
    image_token_count,
    load_traces,
    prepare_example,
    with_images,
)
from grounded_rl.models import Family, geometry_for
from trace_forge.dataset import FEATURES, write_dataset
from trace_forge.errors import DataError
from trace_forge.grounding import Frame, Point, Step, ZoomSpec, zoom
from trace_forge.linearize import Chain, ChainSource, to_dialog
from trace_forge.tasks.prompts import NORM1000_HINT, PROMPT_VERSION, TEMPLATES, prompts_for

TEST_ZOOM = ZoomSpec(crop=64, out=112)  # small crops: 16 visual tokens each with the tiny processors
_PROMPTS = prompts_for("option")


# ---------------------------------------------------------------------------------------------------------------
# Hand-made trace rows in the trace-forge contract (shared with test_sft.py)
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


def make_row(
    seed: int, mode: str = "multi", n_steps: int = 2, size: tuple[int, int] = (224, 168), system: str | None = None
) -> dict:
    """One trace row (all contract columns) for a random grounded chain, linearized like trace-forge does.

    ``system`` replaces the student system prompt (training tests use a short one: every byte is a token).
    """
    rng = random.Random(seed)
    canvas = make_canvas(seed, size)
    colours = ["red", "green", "blue", "white"]
    steps = tuple(
        Step(f"The {rng.choice(colours)} square is here", Point(rng.uniform(10, size[0] - 10),
                                                                 rng.uniform(10, size[1] - 10)))
        for _ in range(n_steps)
    )
    answer = rng.choice(colours)
    chain = Chain(f"q{seed}", "direct", steps, answer, True, 1.0, (1.0,), ChainSource(0, (0,)))
    system_text = system if system is not None else _PROMPTS.student_system(mode == "multi")
    system = {"role": "system", "content": [{"type": "text", "text": system_text}]}
    question = f"Colour? (A) {colours[0]} (B) {colours[1]}"
    user = {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}
    images = [canvas]
    if mode == "single":
        dialog = [{"role": "assistant", "content": [{"type": "text", "text": chain.render()}]}]
    else:
        dialog = []
        for turn in to_dialog(chain, _PROMPTS, dot=False, max_zooms=4):
            parts = [{"type": "text", "text": turn.text}]
            if turn.zoom is not None:
                images.append(zoom(canvas, *turn.zoom, TEST_ZOOM).image)
                parts.insert(0, {"type": "image", "text": None})
            dialog.append({"role": turn.role, "content": parts})
    return {
        "messages": [system, user, *dialog],
        "images": images,
        "question_id": chain.question_id,
        "task": "vstar",
        "category": "direct_attributes",
        "kind": "direct",
        "mode": mode,
        "steps": [s.to_dict() for s in steps],
        "answer": answer,
        "correct": True,
        "reward": 1.0,
        "node_values": [1.0],
        "image_size": list(size),
        "target_boxes": [[0.0, 0.0, 20.0, 20.0]],
        "source": json.dumps({"run": "test"}),
        "teacher": "sim:test",
        "simulated": True,
        "prompt_version": PROMPT_VERSION,
    }


@pytest.fixture(scope="module")
def processor(tiny_qwen2_5_vl_dir):
    return AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)


def _texts(row: dict, role: str) -> list[str]:
    return [p["text"] for m in row["messages"] if m["role"] == role for p in m["content"] if p["type"] == "text"]


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def test_load_traces_reads_hf_and_parquet_and_names_missing_columns(tmp_path):
    rows = [make_row(i, mode) for i, mode in enumerate(["multi", "single", "multi"])]
    write_dataset({"train": rows[:2], "validation": rows[2:]}, tmp_path / "traces")

    from_hf = load_traces(tmp_path / "traces", "train")
    from_parquet = load_traces(tmp_path / "traces" / "parquet", "validation")
    assert len(from_hf) == 2 and len(from_parquet) == 1
    assert from_hf[0]["messages"] == rows[0]["messages"]
    assert from_parquet[0]["question_id"] == rows[2]["question_id"]
    assert [im.size for im in from_hf[0]["images"]] == [im.size for im in rows[0]["images"]]

    with pytest.raises(DataError, match="no split 'test'"):
        load_traces(tmp_path / "traces", "test")
    from datasets import Dataset

    partial = Dataset.from_list(rows[:1], features=FEATURES).remove_columns(["steps", "answer"])
    partial.save_to_disk(str(tmp_path / "partial"))
    with pytest.raises(DataError, match=r"missing columns \['steps', 'answer'\]"):
        load_traces(tmp_path / "partial")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a trace dataset"):
        load_traces(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------------
# Point rewriting
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_prepare_example_moves_every_point_to_the_family_frame(tiny_model_dir, family):
    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    row = make_row(3, "multi", n_steps=3, size=(517, 389))
    geometry = geometry_for(processor, 517, 389)
    frame = Family(family).frame
    prepared = prepare_example(row, processor, family)

    for raw in row["steps"]:
        step = Step.from_dict(raw)
        old, new = step.point.rounded(), step.to(frame, geometry).point.rounded()
        assert old != new  # the frames differ at this size, so a missed rewrite would show
        assistant = " ".join(_texts(prepared, "assistant"))
        tool = " ".join(_texts(prepared, "tool"))
        assert f"({new[0]}, {new[1]})" in assistant  # inline literal
        assert f'"point": [{new[0]}, {new[1]}]' in assistant  # zoom call JSON
        assert f"({new[0]}, {new[1]})" in tool  # observation text
        assert f"({old[0]}, {old[1]})" not in assistant + tool
    assert _texts(prepared, "user") == _texts(row, "user")
    assert row["messages"][2] is not prepared["messages"][2]  # the input row is untouched
    assert prepared["images"] is row["images"]

    system = _texts(prepared, "system")[0]
    if frame is Frame.NORM1000:
        assert NORM1000_HINT in system and TEMPLATES["pixel_coordinates"] not in system
    else:
        assert system == _texts(row, "system")[0]


def test_prepare_example_rewrites_all_literals_at_once_and_uses_unrounded_steps(processor):
    # A's new literal is B's old literal: rewriting step by step would move A's literal a second time.
    geometry = geometry_for(processor, 1000, 800)
    a = Point(600.4, 400.0)
    b_xy = a.to(Frame.MODEL, geometry).rounded()
    b = Point(*b_xy)
    answer = Point(999, 0)
    text = (f"<think> A {a.rounded()} then B {b.rounded()}. </think>\n<tool_call>\n"
            f'{{"name": "zoom", "arguments": {{"point":[{b_xy[0]},{b_xy[1]}]}}}}\n</tool_call>'
            f"<answer> {answer.rounded()} </answer>")
    row = {"image_size": [1000, 800], "steps": [Step("A", a).to_dict(), Step("B", b).to_dict()],
           "messages": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]}
    out = _texts(prepare_example(row, processor, "qwen2_5_vl"), "assistant")[0]

    new_a = a.to(Frame.MODEL, geometry).rounded()  # from the float point, not from the literal (600, 400)
    new_b = b.to(Frame.MODEL, geometry).rounded()
    new_answer = answer.to(Frame.MODEL, geometry).rounded()
    assert f"A ({new_a[0]}, {new_a[1]}) then B ({new_b[0]}, {new_b[1]})." in out
    assert f'"point":[{new_b[0]},{new_b[1]}]' in out
    assert f"<answer> ({new_answer[0]}, {new_answer[1]}) </answer>" in out


# ---------------------------------------------------------------------------------------------------------------
# Fitting, labels, alignment guard
# ---------------------------------------------------------------------------------------------------------------


def _encoded_length(processor, messages, images) -> int:
    out = processor.apply_chat_template([with_images(messages, images)], tokenize=True, return_dict=True)
    return len(out["input_ids"][0])


def test_fit_turns_counts_tokens_exactly_and_cuts_only_after_assistant_turns(processor):
    row = prepare_example(make_row(5, "multi", n_steps=3), processor, "qwen2_5_vl")
    messages, images = row["messages"], row["images"]
    roles = [m["role"] for m in messages]
    sizes = [im.size for im in images]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    full = _encoded_length(processor, messages, images)
    assert fit_turns(messages, sizes, processor, full) == len(messages)
    assert fit_turns(messages, sizes, processor, None) == len(messages)
    for keep in (7, 5, 3):  # after each earlier assistant turn
        n_images = sum(p["type"] == "image" for m in messages[:keep] for p in m["content"])
        exact = _encoded_length(processor, messages[:keep], images[:n_images])
        assert fit_turns(messages, sizes, processor, exact) == keep
        assert fit_turns(messages, sizes, processor, exact - 1) == (keep - 2 if keep > 3 else None)
    assert image_token_count(processor, *images[1].size) == 16  # 112 x 112 crop: 4 x 4 tokens of 28 px


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
        prepared = prepare_example(row, processor, "qwen2_5_vl")
        assert trained == "".join(t + "<|im_end|>" for t in _texts(prepared, "assistant"))
        masked = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
        for text in _texts(prepared, "tool") + _texts(prepared, "user") + _texts(prepared, "system"):
            assert text in masked
        assert not any(lab != -100 and t == processor.image_token_id for t, lab in zip(ids, labels, strict=True))


def test_guard_truncates_whole_turns_drops_unfit_rows_and_the_batch_trains(processor, tiny_qwen2_5_vl_dir, caplog):
    long_row, short_row = make_row(11, "multi", n_steps=3), make_row(12, "single")
    prepared = prepare_example(long_row, processor, "qwen2_5_vl")
    # Room for the first two zoom turns but not the third zoom turn nor the answer.
    max_length = _encoded_length(processor, prepared["messages"][:5], prepared["images"][:2]) + 3
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
    only_short = _encoded_length(processor, prepare_example(short_row, processor, "qwen2_5_vl")["messages"],
                                 short_row["images"])
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
    write_dataset({"train": rows}, tmp_path / "traces")
    dataset = load_traces(tmp_path / "traces")
    single = prepare_example(rows[1], processor, "qwen2_5_vl")
    budget = _encoded_length(processor, single["messages"], single["images"])
    kept, counts = drop_unfit(dataset, processor, "qwen2_5_vl", budget)
    fits = [fit_turns(prepare_example(r, processor, "qwen2_5_vl")["messages"], [im.size for im in r["images"]],
                      processor, budget) for r in rows]
    assert counts["rows"] == 3 and counts["dropped"] == sum(f is None for f in fits) >= 1
    assert [r["question_id"] for r in kept] == [r["question_id"] for r, f in zip(rows, fits, strict=True) if f]
    assert drop_unfit(dataset, processor, "qwen2_5_vl", None)[0] is dataset
