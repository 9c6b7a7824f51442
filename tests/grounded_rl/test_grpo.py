"""GRPO on the tiny model, CPU: single-turn steps, and multi-turn steps through the real zoom tool loop.

The random tiny model never writes a tool call, so the multi-turn run uses a *scripted policy*: a logits processor
added to ``generate`` forces a fixed zoom turn (or, after a tool response, a fixed answer turn). Everything after
sampling is real: TRL's tool loop calls :class:`ZoomEnvironment`, crops join the training forward pass, rewards,
masks and the update run as in training. One prompt of the two never answers, to exercise over-turn masking.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import grounded_rl.grpo
from grounded_rl.env import ZoomEnvironment, ZoomRefused, ZoomSession
from grounded_rl.grpo import GroundedGRPOConfig, ZoomCollapseWatch, build_trainer, load_prompts, run_grpo
from grounded_rl.rewards import RAW_TEXT, REWARDS, accuracy_reward
from grounded_rl.training import RUN_FILE, RunOptions
from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, Resize, View, render_answer_turn, render_zoom_turn
from trace_forge.tasks import get_task

TASK_OPTIONS = {"image": "image", "question": "question", "boxes": "boxes", "answer_kind": "point"}
REPO = Path(__file__).resolve().parents[2]
ANSWERS = "Point to the red square."  # this prompt's scripted rollouts zoom, then answer
LOOPS = "Where is the red square?"  # this one's keep zooming: over-turn


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-question point task in the generic layout: a red square on white, 224 x 168 px."""
    root = tmp_path_factory.mktemp("squares")
    rows = []
    for i, question in enumerate((ANSWERS, LOOPS)):
        image = Image.new("RGB", (224, 168), "white")
        box = [40 + 60 * i, 40, 80 + 60 * i, 80]
        ImageDraw.Draw(image).rectangle(box, fill="red")
        image.save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": question, "boxes": [box]})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def config(model: Path, data: Path, out: Path, **overrides) -> GroundedGRPOConfig:
    base = dict(
        model=str(model), task="generic", task_options=TASK_OPTIONS, data_dir=str(data), output_dir=str(out),
        num_generations=2, max_steps=2, max_completion_length=40, learning_rate=1e-3, report_to=[],
        save_strategy="no", seed=0, shuffle_dataset=False,
    )
    return GroundedGRPOConfig(**{**base, **overrides})


def test_config_resolves_the_paper_defaults_per_mode(tmp_path: Path) -> None:
    single = GroundedGRPOConfig(output_dir=str(tmp_path), task="vstar", report_to=[])
    assert single.bf16 is False and single.dataloader_pin_memory is False  # this machine has no GPU: fp32
    assert (single.num_generations, single.max_grad_norm, single.per_device_train_batch_size) == (5, 1.0, 5)
    assert (single.learning_rate, single.beta, single.epsilon, single.epsilon_high) == (1e-6, 0.01, 0.2, 0.28)
    assert (single.temperature, single.top_p, single.max_completion_length) == (1.0, 0.99, 2048)
    assert single.rewards == {"format": 0.5, "accuracy": 0.5, "grounding": 0.0} and single.mask_truncated_completions
    multi = GroundedGRPOConfig(output_dir=str(tmp_path), task="vstar", multi_turn=True, report_to=[])
    assert (multi.num_generations, multi.max_grad_norm, multi.max_tool_calling_iterations) == (8, 0.2, 4)
    assert multi.rewards["accuracy"] == 0.6 and multi.rewards["zoom_diversity"] == 0.4


def test_single_turn_grpo_runs_and_saves_fp32_quietly(
    tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        out = run_grpo(config(tiny_qwen2_5_vl_dir, squares, tmp_path / "grpo", report_to=["tensorboard"]))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # no spurious warning
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float32}
    run = json.loads((out / RUN_FILE).read_text())
    assert run["command"] == "grpo" and run["settings"]["rewards"] == {"format": 0.5, "accuracy": 0.5,
                                                                       "grounding": 0.0}
    assert run["config"]["reward_weights"] == [0.5, 0.5, 0.0]
    assert run["settings"]["num_generations"] == 2 and run["git_commit"] and run["finished"]
    card = (out / "README.md").read_text()
    assert "GRPO" in card and "single-turn" in card and str(tiny_qwen2_5_vl_dir) in card and str(squares) in card


# ---------------------------------------------------------------------------------------------------------------
# Multi-turn with a scripted policy
# ---------------------------------------------------------------------------------------------------------------


# The scripted turns, each ending with its end-of-turn token: first zoom, second zoom (looping prompt), answer.
SCRIPTED = [
    render_zoom_turn("The square (30, 30).", (30, 30)) + "<|im_end|>",
    render_zoom_turn("Maybe here (120, 60).", (120, 60)) + "<|im_end|>",
    render_answer_turn("Found it.", "(60, 60)") + "<|im_end|>",
]


class Script:
    """A logits processor forcing one scripted assistant turn per row; which one depends on the row's context."""

    def __init__(self, tokenizer) -> None:
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.zoom_first = ids(SCRIPTED[0])
        self.zoom_again = ids(SCRIPTED[1])
        self.answer = ids(SCRIPTED[2])
        self.tool_response = tokenizer.convert_tokens_to_ids("<tool_response>")
        self.loops = tokenizer(LOOPS, add_special_tokens=False)["input_ids"]
        self.start: int | None = None

    def _turn(self, row: list[int]) -> list[int]:
        looping = any(row[i : i + len(self.loops)] == self.loops for i in range(len(row)))
        if self.tool_response not in row:
            return self.zoom_first
        return self.zoom_again if looping else self.answer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for b, row in enumerate(input_ids.tolist()):
            turn = self._turn(row[: self.start])
            forced[b, turn[min(step, len(turn) - 1)]] = 0.0
        return forced


@pytest.fixture(scope="module")
def multi_run(tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two multi-turn GRPO steps (one prompt each): what the vision tower saw with grad on, and the batches."""
    from transformers import LogitsProcessorList

    cfg = config(
        tiny_qwen2_5_vl_dir, squares, tmp_path_factory.mktemp("grpo-multi"),
        multi_turn=True, max_images=2, max_completion_length=700, diversity_requires_correct=False,
    )
    trainer = build_trainer(cfg)
    model = trainer.model
    real_generate = model.generate

    def scripted_generate(*args, **kwargs):  # a fresh script per call: each call starts its own turn
        return real_generate(*args, logits_processor=LogitsProcessorList([Script(trainer.processing_class.tokenizer)]),
                             **kwargs)

    model.generate = scripted_generate

    crops: list[Image.Image] = []
    real_zoom = ZoomEnvironment.zoom

    @functools.wraps(real_zoom)  # TRL finds tools by name
    def recording_zoom(self, point):
        parts = real_zoom(self, point)
        crops.append(parts[0]["image"])
        return parts

    seen: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        if torch.is_grad_enabled():  # the training forward; generation and reference passes run without grad
            seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    batches: list[dict] = []
    real_score = trainer._generate_and_score_completions

    def recording_score(inputs):
        output = real_score(inputs)
        batches.append(output)
        return output

    trainer._generate_and_score_completions = recording_score

    rewarded: list[list] = []  # the rollouts as the reward functions receive them
    real_rewards = trainer._calculate_rewards

    def recording_rewards(inputs, prompts, completions, completion_ids_list):
        rewarded.extend(completions)
        return real_rewards(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = recording_rewards
    hook = model.model.visual.register_forward_pre_hook(capture, with_kwargs=True)
    ZoomEnvironment.zoom = recording_zoom
    try:
        trainer.train()
    finally:
        ZoomEnvironment.zoom = real_zoom
        hook.remove()
    logs = [e for e in trainer.state.log_history if "tools/call_frequency" in e]
    return {"trainer": trainer, "crops": crops, "seen": seen, "batches": batches, "logs": logs, "rewarded": rewarded}


def test_multi_turn_grpo_calls_the_zoom_tool(multi_run: dict) -> None:
    logs = multi_run["logs"]
    assert len(logs) == 2
    assert [e["tools/call_frequency"] for e in logs] == [1.0, 1.0]  # one zoom per rollout (limit: 2 images)
    assert [e["tools/zoom_rate"] for e in logs] == [1.0, 1.0]  # every rollout zoomed
    # The scripted points (30, 30), (120, 60), (60, 60) lie on the 224 x 168 image; the tiny processor keeps it.
    assert [e["grounding/points_inside_rate"] for e in logs] == [1.0, 1.0]
    assert [e["tools/failure_frequency"] for e in logs] == [0.0, 0.0]
    assert len(multi_run["crops"]) == 4  # 2 prompts x 2 generations, one crop each
    assert all(c.size == (672, 672) for c in multi_run["crops"])  # the task's zoom spec (V*-style crop)
    assert {"rewards/zoom_diversity_reward/mean", "rewards/accuracy_reward/mean", "kl", "entropy"} <= set(logs[0])


def test_rewards_read_each_turn_as_generated(multi_run: dict) -> None:
    """Every assistant message reaches the rewards with its decoded tokens, not only TRL's parse of them."""
    rollouts = multi_run["rewarded"]
    assert len(rollouts) == 4
    turns = [[m[RAW_TEXT] for m in rollout if m["role"] == "assistant"] for rollout in rollouts]
    assert sorted(turns) == sorted([[SCRIPTED[0], SCRIPTED[2]], [SCRIPTED[0], SCRIPTED[1]]] * 2)  # answer | loop
    parsed = [m for rollout in rollouts for m in rollout if m["role"] == "assistant" and m.get("tool_calls")]
    assert parsed and all("<tool_call>" not in m["content"] for m in parsed)  # the parse alone lost the call


def test_crop_pixels_reach_the_training_forward_pass(multi_run: dict) -> None:
    processor = multi_run["trainer"].processing_class
    seen = torch.cat(multi_run["seen"])  # (patches, channels * patch volume) of every training forward
    assert seen.numel() > 0

    rows = {bytes(row.view(torch.int16).numpy()) for row in seen.to(torch.bfloat16)}  # exact, hashable

    def found(image: Image.Image) -> float:
        """Share of ``image``'s patches (as the processor makes them, in bf16) among the rows seen."""
        patches = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(torch.bfloat16)
        return sum(bytes(p.view(torch.int16).numpy()) in rows for p in patches) / len(patches)

    for crop in multi_run["crops"]:
        # Every patch of the crop is a row of what the vision tower got while gradients were on.
        assert found(crop) == 1.0, "a crop's patches are missing from the training forward pass"
    # And not trivially: an image that was never shown is not there.
    assert found(Image.new("RGB", (672, 672), (0, 128, 255))) == 0.0


def test_tool_tokens_and_over_turn_rollouts_are_masked(multi_run: dict) -> None:
    ratios = sorted(e["tools/over_turn_ratio"] for e in multi_run["logs"])
    assert ratios == [0.0, 1.0]  # the looping prompt's group is over-turn, the other is not
    tokenizer = multi_run["trainer"].processing_class.tokenizer
    for batch in multi_run["batches"]:
        for ids, tool_mask, mask in zip(batch["completion_ids"], batch["tool_mask"], batch["completion_mask"],
                                        strict=True):
            text = tokenizer.decode(ids[mask.bool()])
            if text.count("<tool_call>") > 1:  # zoomed twice: over-turn, nothing trained
                assert tool_mask.sum() == 0
            else:  # zoom, observation, answer: the observation (with its crop tokens) is masked, the rest trained
                masked = tokenizer.decode(ids[(tool_mask == 0) & mask.bool()])
                assert "<tool_response>" in masked and "<|image_pad|>" in masked
                trained = tokenizer.decode(ids[(tool_mask == 1) & mask.bool()])
                assert "<tool_call>" in trained and "<answer>" in trained and "<|image_pad|>" not in trained


def test_refused_zooms_reply_with_the_words_evaluation_sends() -> None:
    """A refusal is the tool's normal text reply (TRL would wrap an exception as "{'error': ...}")."""
    image = Image.new("RGB", (800, 600))
    view = View(Frame.MODEL, Resize(max_pixels=448 * 448))
    env = ZoomEnvironment(view, max_images=2)
    env.reset(image=image, task="vstar")
    session = ZoomSession(image, view, get_task("vstar").zoom, env.session.prompts, max_images=2)

    def refusal(point: object) -> str:
        with pytest.raises(ZoomRefused) as refused:
            session.zoom_at(point)
        return str(refused.value)

    for point in ([9000, 5], [1.5, 2], "(3, 4)", [1, 2, 3]):
        assert env.zoom(point) == [{"type": "text", "text": refusal(point)}], point
    assert env.zoom([100, 80])[0]["image"].size == (672, 672)
    session.zoom(100, 80)
    assert env.zoom([100, 80]) == [{"type": "text", "text": refusal([100, 80])}]  # budget spent
    assert "limit of 2 images" in env.zoom([100, 80])[0]["text"]


def test_max_pixels_caps_the_images_the_policy_sees(tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path: Path) -> None:

    trainer = build_trainer(config(tiny_qwen2_5_vl_dir, squares, tmp_path, max_pixels=112 * 112))
    assert Resize.of_processor(trainer.processing_class).max_pixels == 112 * 112  # generation and forward passes
    model_size = Resize(Resize.of_processor(trainer.processing_class).min_pixels, 112 * 112).model_size(224, 168)
    assert trainer.train_dataset["model_size"] == [list(model_size)] * 2 and model_size[0] * model_size[1] <= 12544


def test_no_prompt_left_after_filtering_is_an_error(tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no prompts left: all 2 of generic are longer than max_prompt_length=8"):
        build_trainer(config(tiny_qwen2_5_vl_dir, squares, tmp_path, max_prompt_length=8))


def trace_prompts(model: Path, traces: Path):
    from transformers import AutoProcessor

    from grounded_rl.models import Family, install_templates

    processor = install_templates(AutoProcessor.from_pretrained(model), Family.QWEN2_5_VL)
    cfg = GroundedGRPOConfig(output_dir=str(traces.parent), data=str(traces), report_to=[])
    return load_prompts(cfg, processor, Family.QWEN2_5_VL)


def test_prompts_from_a_trace_dataset_carry_its_questions(tiny_qwen2_5_vl_dir: Path, tmp_path: Path) -> None:
    """``--data``: one prompt per question of a dataset made by search + linearize, its facts read from the rows'
    columns (question, options, ground truth, task spec), never from the rendered text."""
    from tests.trace_forge.fixtures_trees import example_tree, make_record, write_run
    from trace_forge.dataset import linearize_run

    samples = list(get_task("vstar").load(REPO / "data" / "samples" / "vstar", limit=2))
    run = write_run(tmp_path / "run", [make_record(example_tree(), s) for s in samples])
    linearize_run(run, tmp_path / "traces", "single", val_fraction=0)
    prompts = trace_prompts(tiny_qwen2_5_vl_dir, tmp_path / "traces")
    assert prompts["question_id"] == [s.id for s in samples]
    assert prompts["options"] == [s.options for s in samples] and prompts["answer"] == [s.answer for s in samples]
    assert [list(img.size) for img in prompts[:]["image"]] == [list(s.canvas().size) for s in samples]
    assert prompts["task"] == ["vstar", "vstar"] and prompts["task_options"] == ["{}", "{}"]


def test_a_generic_task_keeps_its_options_through_prompts_rewards_and_the_zoom_tool(
    tiny_qwen2_5_vl_dir: Path, tmp_path: Path
) -> None:
    from tests.trace_forge.fixtures_trees import GENERIC_OPTIONS, write_generic_run
    from trace_forge.dataset import linearize_run

    run, sample = write_generic_run(tmp_path / "run", tmp_path / "data")
    linearize_run(run, tmp_path / "traces", "single", val_fraction=0)
    prompts = trace_prompts(tiny_qwen2_5_vl_dir, tmp_path / "traces")
    assert prompts["task_options"] == [json.dumps(GENERIC_OPTIONS, sort_keys=True)]
    columns = {name: list(prompts[name]) for name in prompts.column_names if name not in ("prompt", "image_sources")}
    right, wrong = f"<answer> {sample.answer} </answer>", "<answer> purple </answer>"
    assert accuracy_reward([right, wrong], **{k: v * 2 for k, v in columns.items()}) == [1.0, 0.0]
    env = ZoomEnvironment(View(Frame.MODEL, Resize()))
    env.reset(image=prompts[0]["image"], **{k: v[0] for k, v in columns.items()})
    assert env.zoom([10, 10])[0]["image"].size == (672, 672)


def test_a_change_of_trls_private_generate_fails_loudly(monkeypatch) -> None:
    """GroundedGRPOTrainer extends GRPOTrainer._generate (private): its shape is checked, by this test on the pinned
    TRL and at run time on any other."""
    import inspect

    from trl import GRPOTrainer

    from grounded_rl.grpo import GroundedGRPOTrainer

    assert list(inspect.signature(GRPOTrainer._generate).parameters) == ["self", "prompts"]
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters) == [
        "self", "inputs", "prompts", "completions", "completion_ids_list"]
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: ([[1]], [[2]], None, [[]], None, {}, None))
    trainer = object.__new__(GroundedGRPOTrainer)
    with pytest.raises(RuntimeError, match=r"GRPOTrainer._generate returned a 7-tuple, not \(prompt_ids, "):
        trainer._generate([])


# ---------------------------------------------------------------------------------------------------------------
# Resume, lazy images, the tool-use watch
# ---------------------------------------------------------------------------------------------------------------


def length_reward(completions: list, **kwargs) -> list[float]:
    """A reward that differs between the rollouts of a random model, so every GRPO step moves the weights."""
    return [len(c if isinstance(c, str) else c[0]["content"]) / 40 for c in completions]


def test_grpo_resumed_from_a_copy_of_checkpoint_3_ends_with_the_weights_of_the_uninterrupted_run(
    tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(REWARDS, "length", lambda **_: length_reward)
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, rewards={"length": 1.0, "format": 0.0},
                    max_completion_length=12, temperature=1.0, learning_rate=5e-3, beta=0.04)
    run_grpo(config(tiny_qwen2_5_vl_dir, squares, tmp_path / "a", **settings))
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "copy" / "checkpoint-3")
    run_grpo(config(tiny_qwen2_5_vl_dir, squares, tmp_path / "b", **settings,
                    resume_from_checkpoint=str(tmp_path / "copy" / "checkpoint-3")))

    want, got = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    base = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    assert any(not torch.equal(base[k], want[k]) for k in want if "visual.merger." in k)  # the projector trained
    assert want.keys() == got.keys() and max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-5
    resumed = json.loads((tmp_path / "b" / RUN_FILE).read_text())
    assert resumed["resumed_from"].endswith("copy/checkpoint-3") and resumed["global_step"] == 6

    # A copied checkpoint is resumed only with its run's settings.
    with pytest.raises(ConfigError, match=r"checkpoint-3 was trained with other settings: beta \(0.04 then, 0.1 now"):
        run_grpo(config(tiny_qwen2_5_vl_dir, squares, tmp_path / "c", **{**settings, "beta": 0.1},
                        resume_from_checkpoint=str(tmp_path / "copy" / "checkpoint-3")))
    # And a folder holding a run is not trained into again without --resume or --overwrite.
    with pytest.raises(ConfigError, match="holds a grpo run of .*add --resume"):
        run_grpo(config(tiny_qwen2_5_vl_dir, squares, tmp_path / "a", **settings))
    with pytest.raises(ConfigError, match=r"--resume: .* holds a grpo run .*, not a sft run"):
        from grounded_rl.training import claim_output

        claim_output(tmp_path / "a", "sft", config(tiny_qwen2_5_vl_dir, squares, tmp_path / "a"), {},
                     RunOptions(resume=True))


def test_prompts_keep_image_references_and_decode_each_canvas_once_per_group(
    tiny_qwen2_5_vl_dir: Path, squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoProcessor

    from grounded_rl.models import Family, install_templates

    decoded = []
    real = grounded_rl.grpo.compose_canvas
    monkeypatch.setattr(grounded_rl.grpo, "compose_canvas", lambda images: decoded.append(images) or real(images))
    processor = install_templates(AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir), Family.QWEN2_5_VL)
    prompts = load_prompts(config(tiny_qwen2_5_vl_dir, squares, tmp_path), processor, Family.QWEN2_5_VL)
    assert decoded == []  # loading read image headers only
    stored = prompts.with_format(None)  # the rows as stored
    assert list(stored["image_sources"]) == [[{"path": str(squares / f"{i}.png"), "bytes": None}] for i in range(2)]
    assert list(stored["image_size"]) == [[224, 168], [224, 168]]

    group = prompts.__getitems__([0, 0, 1, 1])  # how TRL's sampler fetches two groups of two rollouts
    assert len(decoded) == 2 and group[0]["image"] is group[1]["image"]
    assert group[0]["image"].getpixel((60, 60)) == (255, 0, 0) and group[2]["image"].getpixel((60, 60)) != (255, 0, 0)
    prompts.__getitems__([1, 0])  # the groups of the batch before are kept for a group that straddles batches
    assert len(decoded) == 2


def test_the_collapse_watch_warns_when_rollouts_stop_zooming(caplog: pytest.LogCaptureFixture) -> None:
    from transformers import TrainerState

    watch, state = ZoomCollapseWatch(floor=0.1, patience=3), TrainerState()
    with caplog.at_level(logging.WARNING, logger="grounded_rl.grpo"):
        for step, rate in enumerate([0.5, 0.05, 0.0, 0.2, 0.0, 0.05, 0.02, 0.0, 0.0, 0.0], start=1):
            state.global_step = step
            watch.on_log(None, state, None, logs={"tools/zoom_rate": rate, "loss": 0.0})
            watch.on_log(None, state, None, logs={"loss": 0.0})  # a log without the rate changes nothing
    warnings = [r.getMessage() for r in caplog.records]
    assert [w.split(":")[0] for w in warnings] == ["step 7", "step 10"]  # 3 and 6 low steps in a row
    assert "only 2% of rollouts zoomed, under zoom_rate_floor=10% for 3 steps: tool use is collapsing" in warnings[0]
