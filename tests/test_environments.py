"""Environments on their own: contained calls (real worker processes), the python tool (real sandbox),
and the multi-turn episode loop against a scripted engine (token layout, masks, limits, seeds)."""

import json
from dataclasses import dataclass
from functools import partial

import pytest
import torch
from support.environments import Chatty, Exits, Hangs, Raises, ReturnsGarbage

from oat_cpgd.actors.episodes import Limits, run_episodes
from oat_cpgd.environments import PythonTool, Step, call_environments
from oat_cpgd.environments.python_tool import tool_call
from oat_cpgd.oracles import get_oracle
from oat_cpgd.oracles.base import Contained
from oat_cpgd.rollout import turn_seed


def test_an_environment_that_fails_is_contained_and_the_workers_carry_on():
    with get_oracle("gsm8k", timeout_s=1.0, num_workers=1) as oracle:
        envs = [Chatty(oracle), Raises(oracle), Hangs(oracle), ReturnsGarbage(oracle), Exits(oracle), Chatty(oracle)]
        for env in envs:
            env.reset("Q: ", "1")
        results = call_environments(oracle, envs, "step", [("an action",)] * len(envs))
    first, raised, hung, garbage, exited, last = results
    for good in (first, last):
        env, step = good
        assert step == Step("tool: 1 ", 0.25, False, {"steps": 1})
        assert env.turn == 1  # the environment comes back as the call left it
    assert raised == Contained(False, "RuntimeError: broken environment")
    assert hung == Contained(True, None)
    assert not garbage.timed_out and "non-finite reward" in garbage.error
    assert isinstance(exited, Contained) and not exited.timed_out and exited.error


def test_the_readme_environment_answers_calls_and_scores_answers_in_the_workers():
    """examples/my_environment.py as a run uses it: named by --env, resolved at parse time, called in the
    oracle's worker processes (pickled there and back) turn after turn."""
    from examples.my_environment import Calculator, calculate
    from oat_cpgd.args import CPGDArgs
    from oat_cpgd.cli import parse_args
    from oat_cpgd.environments import environment_class

    args = parse_args(CPGDArgs, argv=["--env", "examples.my_environment:Calculator", "--oracle", "math"])
    assert environment_class(args.env) is Calculator
    turns = ["Let me see: <calc>347 * 29</calc>", "<calc>(1 + 2) * -4 / 2</calc>", "So \\boxed{10063}"]
    with get_oracle("math", num_workers=1) as oracle:
        envs = [Calculator(oracle), Calculator(oracle)]
        for env in envs:
            env.reset("What is 347 * 29?", "10063")
        steps = []
        for turn in turns:
            results = call_environments(oracle, envs, "step", [(turn,), ("\\boxed{10062}",)])
            envs = [results[0][0], envs[1]]  # the second episode ended at its first turn
            steps.append(results[0][1])
        wrong = results[1][1]
    assert [(s.observation, s.reward, s.done) for s in steps] == [
        ("<result>10063</result>", 0.0, False),
        ("<result>-6.0</result>", 0.0, False),
        (None, 1.0, True),
    ]
    assert steps[0].info == {"calc_calls": 1} and steps[2].info == {"answer": "10063", "format_ok": True}
    assert (wrong.reward, wrong.done) == (0.0, True)
    # The model's text is never run: anything but arithmetic is refused.
    assert calculate("__import__('os').getcwd()") == "error: only numbers, +, -, * and / are allowed"
    assert calculate("2 ** 10") == "error: only numbers, +, -, * and / are allowed"
    assert calculate("1 / 0") == "error: division by zero" and calculate("3 *").startswith("error: ")


@pytest.fixture
def python_tool():
    # Long enough for a sandbox's start-up on loaded cores (0.04 s idle); the hang below waits it out.
    tool = PythonTool(get_oracle("gsm8k", num_workers=0), timeout_s=3.0)
    tool.reset("What is 347 * 29?", "10063")
    return tool


def fenced(code: str) -> str:
    return f"Let me compute.\n```python\n{code}\n```\n"


def test_python_tool_runs_code_and_the_oracle_scores_the_answer(python_tool):
    step = python_tool.step(fenced("print(347 * 29)"))
    assert (step.observation, step.reward, step.done) == ("```output\n10063\n```\n", 0.0, False)
    assert step.info["tool_calls"] == 1 and step.info["tool_errors"] == step.info["tool_timeouts"] == 0
    assert step.info["sandbox_time"] > 0
    error = python_tool.step(fenced("1 / 0"))
    assert error.observation.endswith("ZeroDivisionError: division by zero\n```\n")
    assert (error.info["tool_errors"], error.info["tool_timeouts"]) == (1, 0)
    hang = python_tool.step(fenced("while True: pass"))
    assert (hang.info["tool_errors"], hang.info["tool_timeouts"]) == (0, 1)
    assert "TimeoutError" in hang.observation and not hang.done
    right, wrong = python_tool.step("The answer is 10063."), python_tool.step("The answer is 10062.")
    assert (right.reward, right.done, right.info["answer"]) == (1.0, True, "10063")
    assert (wrong.reward, wrong.done) == (0.0, True)


def test_the_python_tool_examples_demonstrations_are_what_its_environment_does():
    """examples/python_tool.py's warm start: a tool demonstration's turns are the ones a run sees (its code
    turn is a tool call the stop string ends, the real sandbox answers it with the demonstration's
    observation, its final turn scores 1); a guess is a final answer of the same number."""
    from examples.python_tool import TOOL_SHARE, demonstration, questions

    rows = questions()
    row = rows[2 * len(rows) // 3]
    tool = PythonTool(get_oracle("math", num_workers=0), timeout_s=3.0)
    tool.reset(row["question"], row["answer"])
    code_turn, observation, answer = demonstration(row, 0)
    assert code_turn.endswith(PythonTool.stop) and code_turn.count(PythonTool.stop[0]) == 1
    called = tool.step(code_turn)
    assert (called.observation, called.done, called.info["tool_calls"]) == (observation, False, 1)
    assert tool.step(answer).reward == 1.0
    guess = demonstration(row, TOOL_SHARE[0])
    assert guess == answer and tool.step(guess).reward == 1.0
    kinds = [isinstance(demonstration(row, index), str) for index in range(TOOL_SHARE[1])]
    assert kinds.count(False) == TOOL_SHARE[0]  # the share of tool demonstrations is as stated


@pytest.mark.parametrize(
    "action, code",
    [
        ("```python\nprint(1)\n```", "print(1)"),  # ended by eos, no newline
        ("```python\nx = 1\n```\n then ```python\nprint(2)\n```\n", "print(2)"),  # the last block
        ("```python\nprint(1)\n```\nSo the answer is 1.", None),  # text after the block: an answer
        ("```python\nprint(1)", None),  # never closed (cut by the length limit)
        ("```\nprint(1)\n```\n", None),  # not python
        ("no code at all", None),
    ],
)
def test_what_counts_as_a_tool_call(action, code):
    assert tool_call(action) == code


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool


class ScriptedEngine:
    """Answers every request with two tokens 100 + turn, 200 + turn; records what it was asked."""

    def __init__(self):
        self.requests = []

    def __call__(self, prompt_ids, params):
        self.requests.append((prompt_ids, params))
        turn = len(self.requests) - 1
        return [
            [Sample([100 + turn, 200 + turn], [-0.5, -0.25], f"turn {turn}", max_tokens <= 2)]
            for _, max_tokens in params
        ]


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def run(limits: Limits, *, seeds=(7,), n=2):
    engine = ScriptedEngine()
    oracle = get_oracle("gsm8k", num_workers=0)  # environment calls inline
    episodes = run_episodes(
        Chatty(oracle),
        engine,
        partial(call_environments, oracle),
        encode,
        lambda seed, max_tokens: (seed, max_tokens),
        limits,
        [[1, 2, 3]] * len(seeds),
        ["Q: "] * len(seeds),
        ["1"] * len(seeds),
        list(seeds),
        n,
    )
    return episodes, engine


def test_episodes_keep_the_sampled_tokens_and_mask_the_observations():
    episodes, engine = run(Limits(max_turns=8, turn_tokens=16, episode_tokens=1000))
    model = [[100, 200], [101, 201], [102, 202]]
    observations = [encode("answer"), encode("tool: 1 "), encode("tool: 2 ")]
    expected_ids, expected_mask = [], []
    for obs, turn in zip(observations, model, strict=True):
        expected_ids += obs + turn
        expected_mask += [0] * len(obs) + [1, 1]
    for k, episode in enumerate(episodes):
        assert episode.response_ids == expected_ids and episode.loss_mask == expected_mask
        assert [lp for lp, m in zip(episode.logprobs, expected_mask, strict=True) if m] == [-0.5, -0.25] * 3
        assert (episode.turns, episode.done, episode.truncated) == (3, True, False)
        assert (episode.reward("last"), episode.reward("sum")) == (0.25, 0.75)
        assert episode.totals["steps"] == 3 and episode.env_tokens == sum(map(len, observations))
        assert [seed for _, params in engine.requests for seed, _ in params[k : k + 1]] == [
            turn_seed(7 + k, t) for t in range(3)
        ]
    # Token in: each turn's prompt is the prompt's ids and the episode's ids so far, never re-encoded.
    for turn, (prompts, _) in enumerate(engine.requests):
        so_far = sum((observations[t] + model[t] for t in range(turn)), []) + observations[turn]
        assert prompts == [[1, 2, 3] + so_far] * 2
    assert turn_seed(7, 0) == 7 and len({turn_seed(7, t) for t in range(3)}) == 3


def test_episodes_end_at_the_turn_and_token_limits():
    (cut, *_), _ = run(Limits(max_turns=2, turn_tokens=16, episode_tokens=1000))
    assert (cut.turns, cut.done, cut.truncated, cut.rewards) == (2, True, True, [0.25, 0.25])
    # 6 tokens of "answer", 2 of the model's, then "tool: 1 " cut to the 2 tokens left.
    (short, *_), engine = run(Limits(max_turns=8, turn_tokens=16, episode_tokens=10))
    assert len(short.response_ids) == 10 and short.loss_mask == [0] * 6 + [1, 1] + [0, 0]
    assert (short.turns, short.truncated) == (1, True)
    assert [max_tokens for _, max_tokens in engine.requests[0][1]] == [4, 4]  # the turn's room: 10 - 6


@pytest.mark.slow
def test_a_multi_turn_rollout_trains_on_the_tokens_vllm_sampled(tiny_model_path):
    """Real vLLM, episodes of three turns of `Chatty`, whose observations tokenise differently alone than
    in context: the trajectories hold the sampled ids byte for byte, the observations' own ids, masked,
    and a redo samples the same."""
    from transformers import AutoTokenizer

    from oat_cpgd.actors import Actor
    from oat_cpgd.args import PPOArgs
    from oat_cpgd.placement import local_nodes, plan_placement

    args = PPOArgs(
        pretrain=str(tiny_model_path), oracle="gsm8k", env="support.environments:Chatty", critic_type="grpo",
        num_samples=2, generate_max_length=5, max_episode_tokens=100, prompt_max_length=32,
        eval_generate_max_length=5, rollout_batch_size=2, train_batch_size=2, oracle_workers=1,
    )  # fmt: skip
    args.resolve()
    args.check()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = "Question: "
    prompt_ids = [tokenizer.encode(prompt)] * 2
    actor = Actor(args, plan_placement(local_nodes(), args))
    sampled = []  # what vLLM returned, turn by turn
    generate = actor.generate
    actor.generate = lambda ids, params: sampled.append(generate(ids, params)) or sampled[-1]
    try:
        trajectories, metrics = actor.step(prompt_ids, [prompt] * 2, ["1", "1"], [0, 1], [11, 12])
        redo, _ = actor.step(prompt_ids, [prompt] * 2, ["1", "1"], [0, 1], [11, 12])
        observations = [tokenizer.encode(o, add_special_tokens=False) for o in ("answer", "tool: 1 ", "tool: 2 ")]
        for j, t in enumerate(trajectories):
            expected_ids, expected_mask, expected_logp = [], [], []
            for turn, obs in enumerate(observations):
                sample = sampled[turn][j][0]
                expected_ids += obs + sample.token_ids
                expected_mask += [0] * len(obs) + [1] * len(sample.token_ids)
                expected_logp += [0.0] * len(obs) + sample.logprobs
            assert (t.response_ids, t.loss_mask, t.actor_logprobs) == (expected_ids, expected_mask, expected_logp)
            # Truncated: its last turn hit --generate_max_length.
            assert (t.reward, t.info["turns"], t.truncated) == (0.25, 3, sampled[2][j][0].truncated)
            # Decoding and encoding again would not give these ids: the test would catch a re-encoding.
            full = t.prompt_ids + t.response_ids
            assert tokenizer.encode(tokenizer.decode(full), add_special_tokens=False) != full
            # vLLM's log-probs of the model's tokens, read in the episode's own context, are the sampled ones.
            probe = actor.probe_logprobs(full)[len(t.prompt_ids) - 1 :]
            for logp, mask, recorded in zip(probe, t.loss_mask, t.actor_logprobs, strict=True):
                assert not mask or logp == pytest.approx(recorded, abs=1e-4)
        assert [(t.response_ids, t.actor_logprobs) for t in redo] == [
            (t.response_ids, t.actor_logprobs) for t in trajectories
        ]
        assert len(sampled) == 6  # one engine call per turn, all episodes together
        assert metrics["actor/turns"] == 3 and metrics["actor/steps"] == 3
        env_tokens = sum(len(t.loss_mask) - sum(t.loss_mask) for t in trajectories)
        assert metrics["actor/env_token_frac"] == env_tokens / sum(len(t.response_ids) for t in trajectories)
    finally:
        actor.close()


@pytest.mark.slow
def test_a_one_step_environment_trains_as_the_oracle_does(ray_cluster, tiny_model_path, shared_data, tmp_path):
    """`--env oracle` goes through the multi-turn path (episodes, contained calls, loss masks) and must
    give the single-turn run's samples, rewards and final weights."""
    from safetensors.torch import load_file
    from test_loop import countdown_args

    from oat_cpgd.interface import run as run_loop

    weights, rewards = [], []
    for env in ("", "oracle"):
        args = countdown_args(
            tiny_model_path, shared_data, tmp_path / (env or "none"), "cpgd", env=env, temperature=1.2
        )
        run_dir = run_loop(args)
        weights.append(load_file(run_dir / "final_model" / "model.safetensors"))
        rewards.append(
            [json.loads(line)["actor/reward_mean"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        )
    assert rewards[0] == rewards[1]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
