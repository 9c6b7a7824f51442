"""The ``sim`` backend: a simulated teacher that knows the ground truth, for dry runs, demos and benchmarks.

It reads a request the way a real teacher would (the question, the "Previous step k:" lines, the points already
used, whether the answer is being forced) and writes one well-formed grounded step or a final answer, with a
controlled skill:

- a step points inside a target box with probability ``skill``; otherwise at a uniformly random point, or at a
  near miss drawn around a target with a Gaussian of ``spread`` times the image size;
- unforced, it answers with a probability that grows with depth and jumps once a step has hit a target;
- an answer is right with probability ``answer_accuracy``, plus ``hit_bonus`` once a step has hit a target, so a
  search that explores finds more right answers than independent chains do at low skill.

Everything is seeded from ``seed``, the request's content and the sample index, so the same request always gets
the same replies and the ``n`` samples of one request differ. Points are written in the frame the teacher sees:
pixels of the image as the encoder sends it.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Frame, ImageGeometry, Point, format_point, parse_response
from trace_forge.tasks.prompts import TEMPLATES, prompts_for
from trace_forge.tasks.sample import AnswerKind, Sample
from trace_forge.teachers.base import Chat, Completion, SamplingParams, Teacher, register_teacher
from trace_forge.teachers.cache import request_key
from trace_forge.teachers.errors import TeacherRejected
from trace_forge.teachers.images import ImageEncoder, ImageRef
from trace_forge.teachers.usage import token_shares

__all__ = ["SimTeacher"]

_FRAME = Frame.MODEL  # pixels of the image as sent

# Chance of answering (when not forced): a base, a gain per step taken, and a jump once a target has been seen.
_ANSWER_BASE, _ANSWER_PER_STEP, _ANSWER_AFTER_HIT, _ANSWER_MAX = 0.1, 0.15, 0.35, 0.95
_TRIES = 64  # rejection-sampling attempts for a point with the wanted property
_CHARS_PER_TOKEN = 4  # token counts are estimates: ~4 characters of English per token
_PIXELS_PER_VISUAL_TOKEN = 28 * 28  # as Qwen-VL models see images

_FORCE_ANSWER = TEMPLATES["teacher_force_answer"]


def _template_regex(template: str, **groups: str) -> re.Pattern[str]:
    """A regex for the text a prompt template renders, with its placeholders captured by the given patterns."""
    pieces = re.split(r"\$(\w+)", template)
    parts = [re.escape(p) if i % 2 == 0 else f"(?P<{p}>{groups[p]})" for i, p in enumerate(pieces)]
    return re.compile("".join(parts))


_PREVIOUS_STEP_RE = _template_regex(TEMPLATES["teacher_previous_step"], k=r"\d+", text=r"[^\n]*")
_MIN_STEPS_RE = _template_regex(TEMPLATES["teacher_min_steps"].strip(), n=r"\d+")

_REGIONS = (
    ("top left", "top centre", "top right"),
    ("centre left", "centre", "centre right"),
    ("bottom left", "bottom centre", "bottom right"),
)
_HIT_STEPS = (
    "In the {region} of the image, at {p}, I can make out what the question is about.",
    "The {region} area at {p} shows the object in question clearly.",
)
_MISS_STEPS = (
    "At {p}, in the {region} of the image, there is only background, not what the question asks about.",
    "Looking at the {region} area around {p}, I do not see the object the question is about.",
)
_WRONG_TEXT = "I cannot tell"


@register_teacher
class SimTeacher(Teacher):
    """A teacher that simulates a VLM of a given skill from the samples' ground truth.

    Args:
        model: a label for provenance (``"sim"``).
        samples: the questions it may be asked about; a request is matched to one by its question text and, when
            several share that text, by the content of its first image.
        skill: chance that a step points inside a target box.
        answer_accuracy: chance that a final answer is right before any step has hit a target.
        spread: standard deviation of a near-miss point around a target, as a fraction of the image size.
        seed: base seed of every reply.
        latency_s: seconds each call sleeps, to benchmark a search against a teacher with latency.
        hit_bonus: added to ``answer_accuracy`` once a previous step pointed inside a target.
        encoder: the image encoder; its resize decides the frame the simulated points are written in.

    Example:
        >>> import asyncio
        >>> from PIL import Image
        >>> from trace_forge.grounding import Box
        >>> from trace_forge.teachers import Message
        >>> s = Sample("q1", "demo", [Image.new("RGB", (200, 100))], "Where is the cup?", AnswerKind.POINT,
        ...            target_boxes=[Box(10, 10, 40, 40)])
        >>> sim = SimTeacher("sim", samples=[s], skill=1.0)
        >>> chat = [Message("user", (ImageRef(s.images[0]), prompts_for(s.answer_kind).teacher_user(s, [])))]
        >>> text = asyncio.run(sim._generate(chat, SamplingParams(seed=0)))[0].text
        >>> text.startswith("<think>") or text.startswith("<answer>")
        True
    """

    name = "sim"
    supports_n = True

    def __init__(
        self,
        model: str = "sim",
        *,
        samples: Sequence[Sample] = (),
        skill: float = 0.5,
        answer_accuracy: float = 0.6,
        spread: float = 0.05,
        seed: int = 0,
        latency_s: float = 0.0,
        hit_bonus: float = 0.3,
        encoder: ImageEncoder | None = None,
    ) -> None:
        super().__init__(model, encoder=encoder)
        problems = [f"{k}={v} (need 0 <= {k} <= 1)" for k, v in
                    (("skill", skill), ("answer_accuracy", answer_accuracy), ("hit_bonus", hit_bonus))
                    if not 0 <= v <= 1]
        if spread <= 0:
            problems.append(f"spread={spread} (need > 0)")
        if latency_s < 0:
            problems.append(f"latency_s={latency_s} (need >= 0)")
        if not samples:
            problems.append("no samples (the simulated teacher needs the questions' ground truth: samples=...)")
        if problems:
            raise ConfigError("invalid sim teacher settings: " + "; ".join(problems))
        self.samples = list(samples)
        self.skill = skill
        self.answer_accuracy = answer_accuracy
        self.spread = spread
        self.seed = seed
        self.latency_s = latency_s
        self.hit_bonus = hit_bonus
        self._by_question: dict[str, list[Sample]] | None = None  # built on the first request
        self._by_image: dict[str, list[Sample]] | None = None  # built only if a request's text matches no question
        # Per sample: decoding and re-encoding a screenshot for every request sharing its instruction took 90% of
        # benchmarks/mcts_yield.py's time.
        self._shas: dict[int, set[str]] = {}

    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        request = _Request.read(chat)
        sample = self._find_sample(request)
        geometry = self.encoder.encode(request.image).geometry
        situation = _Situation(sample, geometry, request)
        # The runtime's cache key without the seed, which enters per sample index instead.
        key = request_key(self.name, self.model, chat, replace(params, seed=None),
                          lambda ref: self.encoder.encode(ref).sha256)
        base = params.seed if params.seed is not None else 0
        prompt_tokens = token_shares(request.token_estimate(geometry), params.n)
        completions = []
        for j in range(params.n):
            rng = random.Random(f"{self.seed}/{key}/{base + j}")
            text = self._reply(situation, rng)
            completions.append(_completion(text, params.max_tokens, prompt_tokens[j]))
        return completions

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "simulated": True, "skill": self.skill, "answer_accuracy": self.answer_accuracy,
                "hit_bonus": self.hit_bonus, "spread": self.spread, "seed": self.seed}

    def __repr__(self) -> str:
        return f"SimTeacher(skill={self.skill}, answer_accuracy={self.answer_accuracy}, samples={len(self.samples)})"

    # --- which question is asked -----------------------------------------------------------------------------

    def _find_sample(self, request: _Request) -> Sample:
        if self._by_question is None:
            self._by_question = {}
            for s in self.samples:
                self._by_question.setdefault(prompts_for(s.answer_kind).question_text(s), []).append(s)
        candidates = self._by_question.get(request.question, [])
        if len(candidates) == 1:
            return candidates[0]
        sha = self.encoder.encode(request.image).sha256
        if candidates:  # one question text over several images (a GUI instruction, a BLINK prompt)
            matches = [s for s in candidates if sha in self._image_shas(s)]
        else:  # not our prompt wording: the image alone must tell
            if self._by_image is None:
                self._by_image = {}
                for s in self.samples:
                    for image_sha in self._image_shas(s):
                        self._by_image.setdefault(image_sha, []).append(s)
            matches = self._by_image.get(sha, [])
        if not matches:
            raise TeacherRejected(f"sim: the request matches none of its {len(self.samples)} samples")
        return matches[0]

    def _image_shas(self, sample: Sample) -> set[str]:
        """The sample's image as a request may carry it: as the search sends it (its file's own bytes when no
        resize is needed) or as its canvas re-encoded."""
        shas = self._shas.get(id(sample))
        if shas is None:
            ref = ImageRef.of_sample(sample)
            try:
                shas = {self.encoder.encode(ref).sha256, self.encoder.encode(ImageRef(ref.open())).sha256}
            except DataError:  # an unreadable image matches no request; its own question fails, not the others
                shas = set()
            self._shas[id(sample)] = shas
        return shas

    # --- what to write ---------------------------------------------------------------------------------------

    def _reply(self, s: _Situation, rng: random.Random) -> str:
        hit = any(s.in_target(xy) for xy in s.request.used)
        if not s.request.forced:
            if s.request.depth < s.request.min_steps:
                return self._step(s, rng)
            p_answer = _ANSWER_BASE + _ANSWER_PER_STEP * s.request.depth + (_ANSWER_AFTER_HIT if hit else 0.0)
            if rng.random() >= min(_ANSWER_MAX, p_answer):
                return self._step(s, rng)
        accuracy = min(1.0, self.answer_accuracy + (self.hit_bonus if hit else 0.0))
        return f"<answer> {self._answer(s, rng, rng.random() < accuracy)} </answer>"

    def _step(self, s: _Situation, rng: random.Random) -> str:
        xy = None
        if s.boxes and rng.random() < self.skill:
            xy = s.point_in_target(rng)
        elif s.boxes and rng.random() < 0.5:
            xy = s.near_miss(rng, self.spread)
        if xy is None:
            xy = s.uniform(rng, lambda p: p not in s.request.used)
        hit = s.in_target(xy)
        template = rng.choice(_HIT_STEPS if hit else _MISS_STEPS)
        return f"<think> {template.format(p=format_point(xy), region=s.region(xy))} </think>"

    def _answer(self, s: _Situation, rng: random.Random, right: bool) -> str:
        sample = s.sample
        if sample.answer_kind is AnswerKind.POINT:
            xy = s.point_in_target(rng) if right else s.uniform(rng, lambda p: not s.in_target(p))
            return format_point(xy)
        if sample.answer_kind is AnswerKind.OPTION:
            wrong = [o for o in sample.options if o.strip().lower() != (sample.answer or "").strip().lower()]
            return (sample.answer or "") if right or not wrong else rng.choice(wrong)
        return (sample.answer or "") if right else _WRONG_TEXT


class _Request:
    """What the simulated teacher reads from a chat: image, question, previous steps, forcing, step floor."""

    def __init__(self, image: ImageRef, question: str, steps: list[str], forced: bool, min_steps: int,
                 text_chars: int, images: int) -> None:
        self.image = image
        self.question = question
        self.depth = len(steps)
        self.used = {p.rounded() for text in steps for p in parse_response(f"<think>{text}</think>").points}
        self.forced = forced
        self.min_steps = min_steps
        self.text_chars = text_chars
        self.images = images

    @classmethod
    def read(cls, chat: Chat) -> _Request:
        users = [m for m in chat if m.role == "user"]
        images = [ref for m in chat for ref in m.images]
        if not users or not images:
            raise TeacherRejected("sim: a request needs a user turn with the question's image")
        text = users[0].text
        forced = any(_FORCE_ANSWER in m.text for m in users)
        question = text.replace(_FORCE_ANSWER, "")
        first_step = _PREVIOUS_STEP_RE.search(question)
        if first_step is not None:
            question = question[:first_step.start()]
        steps = [m["text"] for m in _PREVIOUS_STEP_RE.finditer(text)]
        system = " ".join(m.text for m in chat if m.role == "system")
        floor = _MIN_STEPS_RE.search(system)
        return cls(images[0], question.strip(), steps, forced, int(floor["n"]) if floor else 0,
                   sum(len(m.text) for m in chat), len(images))

    def token_estimate(self, geometry: ImageGeometry) -> int:
        visual = geometry.model_width * geometry.model_height // _PIXELS_PER_VISUAL_TOKEN
        return self.text_chars // _CHARS_PER_TOKEN + self.images * visual


class _Situation:
    """One request's sample in the teacher's frame: the image size, the targets and the points already used."""

    def __init__(self, sample: Sample, geometry: ImageGeometry, request: _Request) -> None:
        self.sample = sample
        self.geometry = geometry
        self.request = request
        self.width, self.height = geometry.model_width, geometry.model_height
        self.boxes = [b.to(_FRAME, geometry) for b in sample.target_boxes]

    def in_target(self, xy: tuple[int, int]) -> bool:
        """Whether a written point lands in a target box once mapped back to pixels, as the verifier judges it."""
        point = Point(*xy, _FRAME).to(Frame.PIXEL, self.geometry)
        return any(box.contains(point) for box in self.sample.target_boxes)

    def point_in_target(self, rng: random.Random) -> tuple[int, int]:
        """An unused integer point inside a target (a box thinner than a pixel here: its centre)."""
        for _ in range(_TRIES):
            box = rng.choice(self.boxes)
            xy = self._clip(rng.uniform(box.x1, box.x2), rng.uniform(box.y1, box.y2))
            if self.in_target(xy) and xy not in self.request.used:
                return xy
        return self._clip(*rng.choice(self.boxes).center.rounded())

    def near_miss(self, rng: random.Random, spread: float) -> tuple[int, int] | None:
        """A point near a target but outside every target, or None if none was found."""
        for _ in range(_TRIES):
            centre = rng.choice(self.boxes).center
            xy = self._clip(rng.gauss(centre.x, spread * self.width), rng.gauss(centre.y, spread * self.height))
            if not self.in_target(xy) and xy not in self.request.used:
                return xy
        return None

    def uniform(self, rng: random.Random, wanted: Callable[[tuple[int, int]], bool]) -> tuple[int, int]:
        """A uniformly random point on the image, redrawn (a bounded number of times) until ``wanted(point)``."""
        xy = (0, 0)
        for _ in range(_TRIES):
            xy = (rng.randrange(self.width), rng.randrange(self.height))
            if wanted(xy):
                break
        return xy

    def region(self, xy: tuple[int, int]) -> str:
        col = min(2, 3 * xy[0] // self.width)
        row = min(2, 3 * xy[1] // self.height)
        return _REGIONS[row][col]

    def _clip(self, x: float, y: float) -> tuple[int, int]:
        return min(max(round(x), 0), self.width - 1), min(max(round(y), 0), self.height - 1)


def _completion(text: str, max_tokens: int, prompt_tokens: int) -> Completion:
    """A completion with estimated token counts, cut at ``max_tokens`` as a server would."""
    tokens = math.ceil(len(text) / _CHARS_PER_TOKEN)
    if tokens > max_tokens:
        return Completion(text[: max_tokens * _CHARS_PER_TOKEN], "length", prompt_tokens, max_tokens)
    return Completion(text, "stop", prompt_tokens, tokens)

