"""The MCTS engine end to end through the real OpenAI client against a scripted loopback teacher."""

import asyncio
import hashlib
import json

import pytest
from PIL import Image

from tests.trace_forge.fake_servers import FakeOpenAIServer
from trace_forge.grounding import Box, Resize
from trace_forge.linearize import linearize
from trace_forge.search.mcts import EXPAND_ATTEMPTS, QuestionSearch, SearchConfig, run_search
from trace_forge.search.records import Question, QuestionRecord
from trace_forge.search.store import RunStore
from trace_forge.stats import records_stats
from trace_forge.tasks import AnswerKind, Sample, TaskSpec, get_task
from trace_forge.tasks.prompts import prompts_for
from trace_forge.teachers import Completion, RuntimeConfig, TeacherClient, build_client
from trace_forge.teachers.base import Teacher

SAMPLES = "data/samples/vstar"
FORCE = prompts_for("option").teacher_force_answer()


@pytest.fixture(scope="module")
def task_and_samples():
    task = get_task("vstar")
    return task, list(task.load(SAMPLES))


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:6], "big")


def scripted_teacher(samples, *, same_point=False):
    """A deterministic stand-in for a teacher VLM, answering from the request alone (like a seeded server)."""
    by_question = {s.question: s for s in samples}

    def reply(req, i):
        text = "\n".join(req.texts)
        sample = next(s for q, s in by_question.items() if q in text)
        depth = text.count("Previous step")
        h = _h(req.body.get("seed"), i, depth)
        if FORCE in text or depth >= 3 or h % 4 == 0:
            option = sample.options[h % len(sample.options)]
            return f"<think>Checking the candidates.</think>\n<answer>{option}</answer>"
        x, y = (50, 60) if same_point else (h % 1500, (h // 1500) % 1500)
        return f"<think>The region near ({x}, {y}) shows part of the scene.</think>"

    return reply


def _client(server, tmp_path, name="cache.sqlite", concurrency=16):
    return build_client("openai", "teacher", base_urls=[server.base_url], cache_path=tmp_path / name,
                        config=RuntimeConfig(concurrency=concurrency, timeout_s=10, max_retries=0))


def _search(sample, task, server, tmp_path, config, name="cache.sqlite"):
    async def go():
        async with _client(server, tmp_path, name) as client:
            return await QuestionSearch(sample, task, client, config).run()

    return asyncio.run(go())


def test_tree_shape_rollouts_and_backup(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=4, children=3, rollouts=2, max_depth=4, rollout_max_steps=3)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        result = _search(samples[0], task, server, tmp_path, config)
    tree = result.tree
    rewards_backed_up = 0
    for node in tree.nodes:
        assert len(node.children) <= config.children
        assert node.depth <= config.max_depth
        if node.step is not None and node.id != 0:
            # every expanded non-terminal child got exactly `rollouts` rollouts, each ending in an answer
            assert len(node.rollouts) == config.rollouts
            assert all(len(r.steps) < config.rollout_max_steps for r in node.rollouts)
            rewards_backed_up += len(node.rollouts)
        elif node.terminal:
            assert node.reward in (0.0, 1.0)
            rewards_backed_up += 1
    # The root's visits count every reward backed up (terminal re-visits add one each).
    assert tree.root.visits >= rewards_backed_up
    assert 0.0 <= tree.root.value <= 1.0
    assert result.stats.requests > 0 and result.stats.simulations == config.simulations
    # Points are stored in the pixel frame and rewards come from the V* verifier (option text vs gt).
    for node in tree.nodes:
        for r in node.rollouts:
            assert r.reward == task.score(samples[0], r.answer)


def test_answers_are_forced_at_max_depth(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=6, max_depth=2, rollout_max_steps=5)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        result = _search(samples[1], task, server, tmp_path, config)
        forced_requests = [r for r in server.requests if FORCE in "\n".join(r.texts)]
    assert forced_requests  # depth 2 is reached and the answer forced there
    assert all(n.depth <= 2 for n in result.tree.nodes)
    assert all(n.terminal for n in result.tree.nodes if n.depth == 2)
    for node in result.tree.nodes:
        for r in node.rollouts:
            assert node.depth + len(r.steps) < 2 or r.forced


def test_children_repeating_a_point_are_dropped(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=2, max_depth=5)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples, same_point=True)) as server:
        result = _search(samples[2], task, server, tmp_path, config)
    points = [n.step.point.rounded() for n in result.tree.nodes if n.step is not None]
    for node in result.tree.nodes:
        path_points = [s.point.rounded() for s in result.tree.steps_to(node)]
        assert len(path_points) == len(set(path_points))
    assert result.stats.dropped_repeats > 0
    assert len(set(points)) >= 1


def test_search_is_deterministic_given_seed(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=3, seed=7)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        a = _search(samples[0], task, server, tmp_path, config, "a.sqlite")
        b = _search(samples[0], task, server, tmp_path, config, "b.sqlite")
        c = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=3, seed=8), "c.sqlite")
    assert a.tree.to_dict() == b.tree.to_dict()
    assert a.tree.to_dict() != c.tree.to_dict()


def _stats_of(tree):
    """Run statistics of one searched tree, as ``trace-forge stats`` counts it."""
    question = Question("q", TaskSpec("vstar"), "?", AnswerKind.OPTION, [], (1, 1), ["a", "b"], "a")
    return records_stats([QuestionRecord(question, tree, {}, "2")])


def _run(samples, task, server, run_dir, config):
    async def go():
        async with _client(server, run_dir) as client:
            return await run_search(samples, task, client, config, RunStore(run_dir))

    return asyncio.run(go())


def _trees(run_dir):
    return {record.id: record.tree.to_dict() for record in RunStore(run_dir).finished().values()}


def test_resume_after_a_crash_repeats_no_request(task_and_samples, tmp_path):
    task, samples = task_and_samples
    config = SearchConfig(simulations=3)
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        clean = _run(samples[:4], task, server, tmp_path / "clean", config)
        crashed = tmp_path / "crashed"
        _run(samples[:4], task, server, crashed, config)
        sent = server.request_count
        # A kill -9 mid-write: the last record is torn; one question was never finished.
        trees = crashed / "trees.jsonl"
        trees.write_bytes(trees.read_bytes()[:-40])
        resumed = _run(samples[:4], task, server, crashed, config)
        assert server.request_count == sent  # the cache answers everything the resumed run asks
    assert clean.done == 4 and resumed.skipped == 3 and resumed.done == 1
    assert _trees(crashed) == _trees(tmp_path / "clean")
    record = next(iter(RunStore(crashed).finished().values()))
    assert record.teacher["simulated"] is False and record.question.image_size[0] >= 1600


def test_budget_and_early_stop(task_and_samples, tmp_path):
    task, samples = task_and_samples
    with FakeOpenAIServer(reply_text=scripted_teacher(samples)) as server:
        capped = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=20, max_calls=3), "x.sqlite")
        early = _search(samples[0], task, server, tmp_path, SearchConfig(simulations=20, stop_after_correct=1),
                        "y.sqlite")
    assert capped.stats.stopped == "budget" and capped.stats.requests <= 3 + 2 * 3 * 3
    assert early.stats.stopped in ("enough_correct", "simulations")
    if early.stats.stopped == "enough_correct":
        assert early.correct >= 1


# --- scripted in-process teachers: one reply rule, no server ---------------------------------------------------------


class Scripted(Teacher):
    """Replies ``reply(prompt_text, request_number)`` to all samples of a request (siblings repeat, so one child
    per expansion); records each request's prompt and seed."""

    name = "scripted-test"
    supports_n = True

    def __init__(self, reply) -> None:
        super().__init__("scripted")
        self.reply = reply
        self.requests: list[tuple[str, int | None]] = []

    async def _generate(self, chat, params):
        text = "\n".join(p for m in chat for p in m.content if isinstance(p, str))
        self.requests.append((text, params.seed))
        return [Completion(self.reply(text, len(self.requests)), "stop")] * params.n


def _scripted_search(sample, task, reply, config):
    teacher = Scripted(reply)
    result = asyncio.run(QuestionSearch(sample, task, TeacherClient(teacher), config).run())
    return result, teacher


TWO_POINTS = "<think>The cup (10, 20) is left of the plate (30, 40).</think>"


def test_an_expansion_that_adds_no_child_is_asked_again_with_a_fresh_seed(task_and_samples):
    task, samples = task_and_samples
    seen: set[str] = set()

    def first_reply_per_prompt_is_bad(text, k):
        if text not in seen:
            seen.add(text)
            return TWO_POINTS  # not one point: dead
        return f"<think>I look at ({100 + 7 * k}, {200 + 3 * k}).</think>"

    config = SearchConfig(simulations=3, rollouts=1, rollout_max_steps=1)
    result, teacher = _scripted_search(samples[0], task, first_reply_per_prompt_is_bad, config)
    root = result.tree.root
    assert root.children  # the bad first reply did not make the root a dead end
    assert result.stats.expand_retries >= 1
    assert teacher.requests[0][0] == teacher.requests[1][0] and teacher.requests[0][1] != teacher.requests[1][1]


def test_a_node_becomes_a_dead_end_after_every_attempt_failed(task_and_samples):
    task, samples = task_and_samples
    result, teacher = _scripted_search(samples[0], task, lambda text, k: TWO_POINTS, SearchConfig(simulations=4))
    assert len(result.tree.nodes) == 1 and result.tree.root.expanded
    assert len(teacher.requests) == EXPAND_ATTEMPTS  # later simulations back up 0 without asking again
    assert result.stats.expand_retries == EXPAND_ATTEMPTS - 1
    assert result.stats.dead == EXPAND_ATTEMPTS * SearchConfig().children
    assert result.tree.root.visits == 3  # the simulations after the failed one


def test_a_step_with_float_coordinates_is_dead(task_and_samples):
    task, samples = task_and_samples
    config = SearchConfig(simulations=1, rollouts=1, rollout_max_steps=1)
    result, _ = _scripted_search(samples[0], task, lambda text, k: "<think>The cup is at (100.5, 50).</think>",
                                 config)
    assert [n for n in result.tree.nodes if n.step is not None] == []
    assert result.stats.dead == EXPAND_ATTEMPTS * config.children


def test_correct_counts_only_trajectories_that_become_chains(task_and_samples):
    task, samples = task_and_samples
    sample = samples[0]
    right = f"<think>It is clearly visible.</think><answer>{sample.answer}</answer>"
    # Answering at once is correct but has no grounded step: no chain, so not "correct".
    result, _ = _scripted_search(sample, task, lambda text, k: right, SearchConfig(simulations=3,
                                                                                  stop_after_correct=1))
    assert any(n.terminal and n.reward == 1 for n in result.tree.nodes)
    assert result.correct == 0 and result.stats.stopped == "simulations"
    # Linearization and run stats apply the same rule.
    assert linearize(result.tree, sample.id) == []
    assert _stats_of(result.tree).correct_trajectories == 0

    # Rollouts that never answer are judged on their last text; right or not, they never become a chain.
    def never_answers(text, k):
        if FORCE in text:  # told to answer, it thinks the right option aloud instead
            return f"<think>{sample.answer}</think>"
        return f"<think>I look at ({100 + 7 * k}, {200 + 3 * k}).</think>"

    config = SearchConfig(simulations=2, max_depth=5, rollout_max_steps=2)
    result, _ = _scripted_search(sample, task, never_answers, config)
    assert any(r.reward == 1 and not r.answered for n in result.tree.nodes for r in n.rollouts)
    assert result.correct == 0

    # One grounded step, then the right answer: a chain, and counted.
    def step_then_answer(text, k):
        return right if "Previous step" in text else f"<think>I look at ({100 + 7 * k}, {200 + 3 * k}).</think>"

    result, _ = _scripted_search(sample, task, step_then_answer, SearchConfig(simulations=1, rollouts=2))
    assert result.correct == 2  # the child's two rollouts (its siblings repeated its point)
    assert _stats_of(result.tree).correct_trajectories == 2


def test_an_unexpected_error_fails_one_question_and_is_recorded(tmp_path):
    def sample(i, size):
        return Sample(f"q{i}", "vstar", [Image.new("RGB", size)], f"What colour is thing {i}?", AnswerKind.OPTION,
                      ["red", "blue"], "red", [Box(0, 0, 5, 5)])

    # A 300:1 banner: smart_resize refuses it with a ValueError, not a TeacherError or DataError.
    samples = [sample(0, (3000, 10)), *(sample(i, (400, 300)) for i in range(1, 4))]
    store = RunStore(tmp_path)

    async def go():
        async with build_client("sim", "sim", samples=samples, resize=Resize(max_pixels=500_000),
                                config=RuntimeConfig(concurrency=2), cache_path=tmp_path / "c.sqlite") as client:
            return await run_search(samples, get_task("vstar"), client, SearchConfig(simulations=2), store)

    summary = asyncio.run(go())
    assert (summary.done, summary.failed, summary.failures) == (3, 1, ["q0"])
    assert sorted(store.finished()) == ["q1", "q2", "q3"]
    (error,) = map(json.loads, store.errors_path.read_text().splitlines())
    assert error["question_id"] == "q0" and error["error"] == "ValueError" and "aspect ratio" in error["message"]
