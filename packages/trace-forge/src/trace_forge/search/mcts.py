"""Monte Carlo tree search over grounded reasoning steps with a teacher VLM (the ViGoRL recipe, made concurrent).

One simulation of :class:`QuestionSearch`:

1. **Select** a node by UCB from the root (:func:`~trace_forge.search.tree.select`).
2. **Expand** it: one request for ``children`` samples (``n = k``: the server shares the prompt's prefill). Each
   sample is either a grounded step (one point) or a final answer (a terminal child). Steps whose point repeats a
   point of their path, or a sibling's, are dropped; malformed samples are counted as dead. An expansion that
   adds no child is asked again with a fresh seed (up to ``EXPAND_ATTEMPTS`` times) before the node becomes a
   dead end: one unlucky reply at the root must not waste the whole question.
3. **Roll out** each new step ``rollouts`` times: ephemeral steps, never added to the tree, until an answer; the
   last allowed step forces one. A rollout that never answers is judged on its last text. The first step of all
   rollouts of a child is one request with ``n = rollouts``.
4. **Back up** every 0/1 reward from the task's verifier along the path as a running mean.

Prompts keep a stable prefix (system, image, question, then earlier steps) so inference servers cache it. Every
request carries a seed derived from (run seed, question, node, purpose), so a search is deterministic given the
seed and the teacher cache, and a resumed run asks for exactly the same requests.

:func:`run_search` runs many questions concurrently under the teacher client's request limit and appends each
finished tree to the run store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trace_forge.errors import TraceForgeError
from trace_forge.grounding import Frame, ImageGeometry, Point, ProblemCode, Step, format_point, parse_response
from trace_forge.search.records import Question, QuestionRecord, store_images
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Node, Rollout, Tree, backup, correct_trajectories, select
from trace_forge.tasks import AnswerKind, Sample, Task, score_answer
from trace_forge.tasks.prompts import PROMPT_VERSION, prompts_for
from trace_forge.tasks.scoring import official_point
from trace_forge.teachers import Completion, ImageRef, Message, SamplingParams, TeacherClient
from trace_forge.teachers.errors import TeacherError, TeacherFormatError, TeacherRejected

__all__ = [
    "SearchConfig",
    "QuestionSearch",
    "SearchResult",
    "NoUsableReply",
    "RunSummary",
    "question_record",
    "run_search",
]

log = logging.getLogger(__name__)

# The teacher writes points in pixels of the image as it was sent, which the client's geometry calls `model`.
TEACHER_FRAME = Frame.MODEL

# Requests for one node's children before it counts as a dead end (the first one included).
EXPAND_ATTEMPTS = 3


@dataclass(frozen=True)
class SearchConfig:
    """Search parameters. Defaults follow ViGoRL (``vigorl-paper.md``, Table A4 and the released script); every
    field is a ``trace-forge search`` flag with this default and help."""

    simulations: int = field(default=8, metadata={"help": "MCTS simulations per question (released script: 8; "
                                                          "paper: 20)."})
    c: float = field(default=2.0, metadata={"help": "UCB exploration constant (paper: 2.0)."})
    children: int = field(default=3, metadata={"help": "Children per expansion, asked in one request with n=k."})
    rollouts: int = field(default=2, metadata={"help": "Rollouts per new child."})
    max_depth: int = field(default=10, metadata={"help": "Tree depth at which an answer is forced."})
    rollout_max_steps: int = field(default=5, metadata={"help": "Steps per rollout; the last one is forced to "
                                                                "answer."})
    temperature: float = field(default=1.0, metadata={"help": "Teacher sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Teacher nucleus sampling mass."})
    max_tokens: int = field(default=512, metadata={"help": "Tokens per teacher step."})
    seed: int = field(default=0, metadata={"help": "Base of every request's seed (with the cache: reproducible)."})
    max_calls: int | None = field(default=None, metadata={
        "help": "Per-question budget of teacher requests that reached the server (cache hits are free); checked "
                "between simulations, so one simulation may overshoot."})
    max_question_tokens: int | None = field(default=None, metadata={
        "help": "Per-question budget of prompt + completion tokens."})
    stop_after_correct: int | None = field(default=None, metadata={
        "help": "Stop a question once it has this many correct trajectories."})

    def __post_init__(self) -> None:
        from trace_forge.errors import ConfigError

        bad = [
            f"{name}={getattr(self, name)}"
            for name in ("simulations", "children", "rollouts", "max_depth", "rollout_max_steps", "max_tokens")
            if getattr(self, name) < 1
        ]
        if self.c < 0:
            bad.append(f"c={self.c}")
        if bad:
            raise ConfigError("invalid search parameters (need positive counts, c >= 0): " + ", ".join(bad))


@dataclass
class QuestionStats:
    """What one question's search cost and found."""

    requests: int = 0  # generate() calls that reached the server (not fully cached)
    completions: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dead: int = 0  # samples that were neither a one-point step nor an answer
    malformed: int = 0  # requests whose replies stayed malformed through the client's retries (their samples: dead)
    dropped_repeats: int = 0  # children whose point repeated their path or a sibling
    expand_retries: int = 0  # expansions asked again because the previous reply added no child
    simulations: int = 0
    stopped: str = "simulations"  # or "budget", "enough_correct"
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class SearchResult:
    tree: Tree
    stats: QuestionStats
    image_size: tuple[int, int] = (0, 0)  # the canvas, in the pixel frame of every stored point

    @property
    def correct(self) -> int:
        """Correct trajectories that linearization turns into chains (see :func:`makes_chain`)."""
        return correct_trajectories(self.tree)

    @property
    def usable(self) -> bool:
        """Whether the teacher gave any usable sample (a step or an answer): the root has a child."""
        return bool(self.tree.root.children)


class NoUsableReply(TraceForgeError):
    """The teacher gave no usable sample for a question (every reply malformed, or no step or answer in any), or
    none for any question of a run."""


@dataclass
class _Read:
    """One teacher sample, interpreted: a step, an answer (with its score), or nothing usable."""

    step: Step | None = None
    answer: str | None = None
    reward: float = 0.0
    problem: str | None = None
    answer_point: Point | None = None


class QuestionSearch:
    """The search of one question. Create one per question and ``await run()``.

    Args:
        sample: the question.
        task: its task (verifier and prompts).
        client: the teacher client (shared by all questions of a run).
        config: search parameters.
    """

    def __init__(self, sample: Sample, task: Task, client: TeacherClient, config: SearchConfig) -> None:
        self.sample = sample
        self.task = task
        self.client = client
        self.config = config
        self.prompts = prompts_for(sample.answer_kind)
        self.image = ImageRef.of_sample(sample)  # the file's own bytes are sent when no resize is needed
        self.geometry: ImageGeometry = client.geometry(self.image)
        self.system = Message("system", (self.prompts.teacher_system(),))
        self.tree = Tree()
        self.stats = QuestionStats()

    # --- the loop ----------------------------------------------------------------------------------------------

    async def run(self) -> SearchResult:
        cfg, tree = self.config, self.tree
        start = time.monotonic()
        for _ in range(cfg.simulations):
            if stop := self._should_stop():
                self.stats.stopped = stop
                break
            self.stats.simulations += 1
            node = select(tree, cfg.c)
            if node.terminal:
                backup(tree, node, node.reward or 0.0)
                continue
            if node.expanded:  # every attempt to expand it was dead or a repeat: a dead end
                backup(tree, node, 0.0)
                continue
            children = await self._expand(node)
            rewards = await asyncio.gather(*(self._evaluate(child) for child in children))
            for child, child_rewards in zip(children, rewards, strict=True):
                for r in child_rewards:
                    backup(tree, child, r)
        self.stats.seconds = round(time.monotonic() - start, 3)
        return SearchResult(tree, self.stats, (self.geometry.width, self.geometry.height))

    async def sample_chain(self, j: int) -> Rollout:
        """Chain ``j`` sampled independently from the question, with no tree: the baseline MCTS is measured against.

        Steps follow one another until an answer, forced at ``max_depth`` steps, exactly like a rollout from the root.
        """
        max_steps = self.config.max_depth
        (first,) = await self._generate([], max_steps == 1, n=1, seed=self._seed("chain", j))
        return await self._continue(self.tree.root, j, first, max_steps)

    def _should_stop(self) -> str | None:
        cfg, s = self.config, self.stats
        if (cfg.max_calls is not None and s.requests >= cfg.max_calls) or (
            cfg.max_question_tokens is not None and s.tokens >= cfg.max_question_tokens
        ):
            return "budget"
        if cfg.stop_after_correct is not None and SearchResult(self.tree, s).correct >= cfg.stop_after_correct:
            return "enough_correct"
        return None

    async def _expand(self, node: Node) -> list[Node]:
        """Ask for ``children`` next steps after ``node``; add the usable, non-repeating ones as children.

        A reply that adds no child is asked again with a fresh seed, up to :data:`EXPAND_ATTEMPTS` requests; the
        first attempt keeps the seed of earlier versions so their caches still answer it.
        """
        force = node.depth + 1 >= self.config.max_depth
        prior = self.tree.steps_to(node)
        used = {self._teacher_xy(s.point) for s in prior}
        children: list[Node] = []
        for attempt in range(EXPAND_ATTEMPTS):
            if attempt:
                self.stats.expand_retries += 1
            seed = self._seed("expand", node.id) if attempt == 0 else self._seed("expand", node.id, attempt)
            samples = await self._generate(prior, force, n=self.config.children, seed=seed)
            for comp in samples:
                read = self._read(comp.text, force)
                if read.answer is not None:
                    children.append(self.tree.add_child(node, answer=read.answer, reward=read.reward,
                                                        answer_point=read.answer_point))
                elif read.step is None:
                    self.stats.dead += 1
                elif (xy := self._teacher_xy(read.step.point)) in used:
                    self.stats.dropped_repeats += 1
                else:
                    used.add(xy)
                    children.append(self.tree.add_child(node, step=read.step))
            if children:
                break
        node.expanded = True  # with children, or a dead end after every attempt
        return children

    async def _evaluate(self, child: Node) -> list[float]:
        """Rewards to back up for a new child: its own score if terminal, else those of its rollouts."""
        if child.terminal:
            return [child.reward or 0.0]
        cfg = self.config
        prior = self.tree.steps_to(child)
        max_steps = max(1, min(cfg.rollout_max_steps, cfg.max_depth - child.depth))
        first = await self._generate(prior, max_steps == 1, n=cfg.rollouts, seed=self._seed("rollout", child.id))
        child.rollouts = list(
            await asyncio.gather(*(self._continue(child, j, first[j], max_steps) for j in range(cfg.rollouts)))
        )
        return [r.reward for r in child.rollouts]

    async def _continue(self, child: Node, j: int, comp: Completion, max_steps: int) -> Rollout:
        """Rollout ``j`` of ``child``: keep asking for steps until an answer or the forced last step."""
        prior = self.tree.steps_to(child)
        steps: list[Step] = []
        for t in range(1, max_steps + 1):
            if t > 1:
                (comp,) = await self._generate(
                    prior + steps, t == max_steps, n=1, seed=self._seed("rollout", child.id, j, t)
                )
            read = self._read(comp.text, t == max_steps)
            if read.answer is not None:
                return Rollout(steps, read.answer, read.reward, forced=t == max_steps, answered=True,
                               answer_point=read.answer_point)
            if read.step is not None:
                steps.append(read.step)
            else:
                self.stats.dead += 1
        # Never answered: judge the last text, as the reference does, so the rollout still informs the tree.
        judged = self._judge(_strip_tags(comp.text))
        return Rollout(steps, judged.answer, judged.reward, forced=True, answered=False,
                       answer_point=judged.answer_point)

    # --- teacher I/O ---------------------------------------------------------------------------------------------

    async def _generate(self, prior: list[Step], force: bool, *, n: int, seed: int) -> list[Completion]:
        texts = [s.to(TEACHER_FRAME, self.geometry).text for s in prior]
        user: list[str | ImageRef] = [self.image, self.prompts.teacher_user(self.sample, texts)]
        if force:
            user.append("\n\n" + self.prompts.teacher_force_answer())
        cfg = self.config
        params = SamplingParams(
            n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed
        )
        try:
            comps = await self.client.generate([self.system, Message("user", tuple(user))], params)
        except TeacherFormatError:
            # A malformed reply is a dead node, not a failed question: the search goes on without it (a question
            # that gets nothing else fails in run_search).
            self.stats.dead += n
            self.stats.malformed += 1
            return [Completion("", "error")] * n
        s = self.stats
        fresh = [c for c in comps if not c.cached]
        s.requests += bool(fresh)
        s.completions += len(fresh)
        s.cached += len(comps) - len(fresh)
        s.prompt_tokens += sum(c.prompt_tokens for c in fresh)
        s.completion_tokens += sum(c.completion_tokens for c in fresh)
        return comps

    def _read(self, text: str, force: bool) -> _Read:
        """Interpret one teacher sample as a step or an answer; points come back in the pixel frame."""
        parsed = parse_response(text, geometry=self.geometry, frame=TEACHER_FRAME, expect="step")
        if parsed.answer is not None and parsed.answer.strip():
            return self._judge(parsed.answer)
        if force:
            return _Read(problem="no_answer")
        if len(parsed.think) != 1 or len(parsed.steps) != 1:
            # A step anchors exactly one point; text with several would mix frames once converted.
            return _Read(problem="not_one_point")
        if parsed.has(ProblemCode.FLOAT_COORDINATE):
            # The stored text would keep the literal written in the teacher's frame: a wrong-frame number.
            return _Read(problem=ProblemCode.FLOAT_COORDINATE.value)
        step = Step(parsed.think[0], parsed.steps[0].point)
        if not self.geometry.contains(step.point.x, step.point.y, TEACHER_FRAME):
            return _Read(problem="point_outside_image")
        return _Read(step=step.to(Frame.PIXEL, self.geometry))

    def _judge(self, answer: str) -> _Read:
        """An answer with its official score (:func:`~trace_forge.tasks.score_answer`).

        A point answer is kept in the pixel frame, converted like the steps' points (so it reads back in the
        teacher's frame exactly as the teacher wrote it), and stored as that point's literal.
        """
        score = float(score_answer(self.task, self.sample, answer, self.geometry, TEACHER_FRAME).score)
        xy = official_point(answer) if self.sample.answer_kind is AnswerKind.POINT else None
        if xy is None:
            return _Read(answer=answer, reward=score)
        point = Point(*xy, TEACHER_FRAME).to(Frame.PIXEL, self.geometry)
        return _Read(answer=format_point(point), reward=score, answer_point=point)

    def _teacher_xy(self, point: Point) -> tuple[int, int]:
        return point.to(TEACHER_FRAME, self.geometry).rounded()

    def _seed(self, *parts: object) -> int:
        key = "/".join(map(str, (self.config.seed, self.sample.task, self.sample.id, *parts)))
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


def _strip_tags(text: str) -> str:
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        text = text.replace(tag, " ")
    return " ".join(text.split())


# --- a whole run ---------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """Counts of one :func:`run_search` call over its questions.

    ``done`` and ``failed`` count this call's work; ``skipped`` the questions an earlier session finished;
    ``solved`` every question of the call with a correct trajectory, earlier sessions' included, so a resumed
    run reports its yield, not this session's share of it.
    """

    done: int = 0
    solved: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)


def question_record(
    sample: Sample, task: Task, result: SearchResult, client: TeacherClient, store: RunStore,
    data_dir: str | Path | None,
) -> QuestionRecord:
    """The ``trees.jsonl`` record of a finished search: the question with its image references, the tree, the
    client's teacher provenance and the search's counters."""
    images = store_images(sample, store.root, data_dir)
    return QuestionRecord(
        question=Question.of(sample, task.spec, images, result.image_size),
        tree=result.tree,
        teacher={**client.teacher.describe(), "simulated": client.teacher.name == "sim"},
        prompt_version=PROMPT_VERSION,
        stats={**asdict(result.stats), "correct": result.correct},
    )


async def run_search(
    samples: Iterable[Sample],
    task: Task,
    client: TeacherClient,
    config: SearchConfig,
    store: RunStore,
    *,
    data_dir: str | Path | None = None,
    questions_in_flight: int | None = None,
    max_failure_rate: float = 0.5,
    on_done: Callable[[Sample, SearchResult | None], None] | None = None,
) -> RunSummary:
    """Search every sample not already in ``store``, many questions at once, appending each finished tree.

    A question that raises (teacher gave up, unreadable image, an unexpected bug) or whose search got no usable
    sample from the teacher (:class:`NoUsableReply`) is recorded in ``errors.jsonl`` with the error's type and
    message and counted as failed, not finished, so a resumed run searches it again; the others go on.

    Args:
        samples: questions to search (already sharded/limited by the caller).
        task: their task.
        client: teacher client; its concurrency limit bounds requests in flight across all questions.
        config: search parameters.
        store: run directory; finished questions are skipped (resume).
        data_dir: the task data folder; records reference its images relative to it.
        questions_in_flight: trees searched at once; by default the client's request limit, so the server stays
            saturated even while most trees wait on a single expansion request (trees are cheap to hold).
        max_failure_rate: abort once more than this share of the questions attempted (after the first 10)
            failed for good: a dead server should stop the run, not burn through the dataset.
        on_done: called after each question (None result: it failed), for progress displays.

    Returns:
        counts of this call's work.

    Raises:
        NoUsableReply: questions were attempted and the teacher gave a usable sample for none of them.
        TeacherRejected: the teacher refused the endpoint or our credentials (401/403/404/405/407).
        StorageError: a finished question could not be stored (a full disk); what was stored is kept.
        TraceForgeError: more than ``max_failure_rate`` of the questions failed.
    """
    finished = store.finished()
    summary = RunSummary()
    if questions_in_flight is None:
        questions_in_flight = max(4, client.config.concurrency)
    queue: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=2 * questions_in_flight)
    abort: list[Exception] = []  # why the run stops early; a worker that dies would leave the queue blocked
    teacher_failures: list[Exception] = []  # the teacher's fault: it gave up, refused, or gave nothing usable

    def fail(sample: Sample, e: Exception) -> None:
        if isinstance(e, TeacherError | NoUsableReply):
            teacher_failures.append(e)
        if isinstance(e, TeacherRejected) and e.endpoint_refused:
            abort.append(e)  # bad credentials or no such model or route fail every question: stop at once
        log.warning("question %s failed: %s: %s", sample.id, type(e).__name__, e)
        log.debug("question %s: traceback", sample.id, exc_info=True)
        store.append_error({"question_id": sample.id, "error": type(e).__name__, "message": str(e)})
        summary.failed += 1
        summary.failures.append(sample.id)
        attempted = summary.done + summary.failed
        if attempted >= 10 and summary.failed / attempted > max_failure_rate:
            abort.append(
                TraceForgeError(
                    f"{summary.failed} of {attempted} questions failed (last: {e}); stopping the run. "
                    "Check the teacher server; --resume continues where this stopped."
                )
            )

    async def search_one(sample: Sample) -> None:
        try:
            # Built in a thread: decoding and encoding a large image takes seconds, which would stall
            # every other question's requests on the event loop.
            search = await asyncio.to_thread(QuestionSearch, sample, task, client, config)
            result = await search.run()
            if not result.usable:
                s = result.stats
                raise NoUsableReply(f"no usable sample from the teacher ({s.malformed} request(s) with malformed "
                                    f"replies; {s.dead} sample(s) in all neither a one-point step nor an answer)")
        except Exception as e:  # one bad question (an odd image, a bug) must not sink the others
            fail(sample, e)
            if on_done:
                on_done(sample, None)
            return
        # Hashing the images and the fsync stay off the event loop, where other questions' requests wait.
        record = await asyncio.to_thread(question_record, sample, task, result, client, store, data_dir)
        await asyncio.to_thread(store.append, record)
        summary.done += 1
        summary.solved += result.correct > 0
        if on_done:
            on_done(sample, result)

    async def worker() -> None:
        while (sample := await queue.get()) is not None:
            if abort:
                continue
            try:
                await search_one(sample)
            except Exception as e:  # storing failed (a full disk) or a bug: stop, keeping what is stored
                abort.append(e)

    workers = [asyncio.create_task(worker()) for _ in range(questions_in_flight)]
    try:
        for sample in samples:
            if sample.id in finished:
                summary.skipped += 1
                summary.solved += correct_trajectories(finished[sample.id].tree) > 0
                continue
            if abort:
                break
            await queue.put(sample)
    finally:
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    if abort and isinstance(abort[0], TeacherError):
        raise abort[0]
    if summary.failed and not summary.done and len(teacher_failures) == summary.failed:
        raise NoUsableReply(
            f"the teacher gave no usable reply in this run: all {summary.failed} question(s) attempted failed (last: "
            f"{teacher_failures[-1]}); see {store.errors_path}, and check --model, --base-url and the server's log")
    if abort:
        raise abort[0]
    return summary
