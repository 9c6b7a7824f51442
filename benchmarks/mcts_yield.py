"""MCTS yield vs. independent chain sampling at the same teacher budget, with the simulated teacher.

For each question, MCTS runs first and its teacher samples (completions, cached or not) are counted; then whole
chains are sampled independently from the question until they have used at least as many samples. The figure of
merit is the share of questions with at least one correct trajectory, scored the same way in both arms: a
trajectory counts when linearization would turn it into a training chain (:func:`makes_chain`: judged correct,
really answered, at least one grounded step); a chain that never answered is not credited for its last text.

The simulated teacher has a fixed, low skill: it rarely points at the target and rarely answers right unless it
has looked at the target, the regime where search is supposed to pay off. The defaults (skill 0.05, answer
accuracy 0.02, the reference's 8 simulations) leave both arms well below 100% (the former skill 0.15 / accuracy
0.2 saturated both at 97.9%).

Run from the repository root (about a minute)::

    uv run python -m benchmarks.mcts_yield --skill 0.05 --accuracy 0.02 --simulations 8 --seeds 3

The last line is ``RESULT mcts=<share> independent=<share> ratio=<mcts / independent> samples_per_question=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio

from trace_forge.search.mcts import QuestionSearch, SearchConfig
from trace_forge.search.tree import makes_chain
from trace_forge.tasks import get_task
from trace_forge.teachers import RuntimeConfig, build_client

SETS = {"vstar": "data/samples/vstar", "screenspot-v2": "data/samples/screenspot_v2",
        "screenspot-pro": "data/samples/screenspot_pro"}


async def one_question(sample, task, client, config):
    mcts = QuestionSearch(sample, task, client, config)
    result = await mcts.run()
    budget = result.stats.completions + result.stats.cached
    chains = QuestionSearch(sample, task, client, config)
    used, correct, j = 0, False, 0
    while used < budget:
        before = chains.stats.completions + chains.stats.cached
        rollout = await chains.sample_chain(j)
        used += chains.stats.completions + chains.stats.cached - before
        correct |= makes_chain(rollout.reward, rollout.answered, len(rollout.steps))
        j += 1
    return result.correct > 0, correct, budget, j


async def run(args) -> None:
    rows = []
    for name, path in SETS.items():
        task = get_task(name)
        samples = list(task.load(path))
        for seed in range(args.seeds):
            client = build_client("sim", "sim", samples=samples, skill=args.skill, answer_accuracy=args.accuracy,
                                  seed=seed, config=RuntimeConfig(concurrency=64))
            config = SearchConfig(simulations=args.simulations, seed=seed)
            async with client:
                results = await asyncio.gather(*(one_question(s, task, client, config) for s in samples))
            rows += [(name, *r) for r in results]
    print(f"sim teacher: skill {args.skill}, answer accuracy {args.accuracy}; {args.simulations} simulations; "
          f"{args.seeds} seeds")
    print(f"{'task':16s} {'questions':>9s} {'MCTS':>8s} {'independent':>12s} {'samples/question':>17s}")
    for name in [*SETS, "all"]:
        sel = [r for r in rows if name in ("all", r[0])]
        n = len(sel)
        mcts = sum(r[1] for r in sel) / n
        indep = sum(r[2] for r in sel) / n
        budget = sum(r[3] for r in sel) / n
        print(f"{name:16s} {n:9d} {mcts:8.1%} {indep:12.1%} {budget:17.1f}")
    print(f"RESULT mcts={mcts:.3f} independent={indep:.3f} ratio={mcts / indep if indep else float('inf'):.2f} "
          f"samples_per_question={budget:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skill", type=float, default=0.05, help="sim: probability a step points at the target")
    p.add_argument("--accuracy", type=float, default=0.02, help="sim: probability a final answer is right")
    p.add_argument("--simulations", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
