"""Multi-turn episodes, token in and token out.

An episode's response is one token list, built as it happens: each model turn appends the token ids
vLLM sampled, with their log-probs (loss mask 1); each observation appends its text tokenised once,
on its own (loss mask 0). The next turn's prompt is the prompt's ids plus that list: the model's
tokens are never decoded and encoded again, so the learner trains on exactly the tokens that were
sampled, in exactly the context they were sampled in (re-encoding the text would merge tokens across
turn boundaries and change both).

All active episodes of a rollout take their turn in one batched engine call. A turn's sampling seed is
a function of its episode's seed and the turn number (oat_cpgd.rollout.turn_seed): an episode redone on
a restarted actor samples the same turns.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oat_cpgd.environments import Environment, Step
from oat_cpgd.oracles.base import Contained
from oat_cpgd.rollout import turn_seed

Generate = Callable[[list[list[int]], list[Any]], list[list[Any]]]
"""(prompt ids per request, sampling params per request) -> one list of one `Sample` per request."""
Call = Callable[[list[Environment], str, list[tuple]], list[Any]]
"""oat_cpgd.environments.call_environments with the oracle bound: contained environment calls."""


@dataclass(frozen=True)
class Limits:
    max_turns: int
    turn_tokens: int
    """A model turn's new tokens at most (--generate_max_length)."""
    episode_tokens: int
    """An episode's response tokens at most, the model's and the environment's (--max_episode_tokens)."""


@dataclass
class Episode:
    """One episode in progress: its response so far, and how it ended."""

    prompt: int
    """Position of its prompt in the rollout."""
    seed: int | None
    environment: Environment
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    """The turns' and observations' texts, for the log (the tokens above are what trains)."""
    rewards: list[float] = field(default_factory=list)
    turns: int = 0
    done: bool = False
    truncated: bool = False
    """Its last model turn hit a length limit, or it ended at a limit before the environment said done."""
    info: dict[str, Any] = field(default_factory=dict)
    """The final step's info, with the environment's failure (`error`, `timed_out`) if it had one."""
    totals: Counter = field(default_factory=Counter)
    """The numbers of its steps' infos, summed (tool calls, sandbox time, ...)."""
    env_tokens: int = 0
    failure: Contained | None = None

    def act(self, sample: Any) -> None:
        """Append a model turn: the sampled ids and their log-probs, as they are."""
        self.response_ids += sample.token_ids
        self.logprobs += sample.logprobs
        self.loss_mask += [1] * len(sample.token_ids)
        self.texts.append(sample.text)
        self.turns += 1
        self.truncated = sample.truncated

    def observe(self, text: str, encode: Callable[[str], list[int]], limits: Limits) -> None:
        """Append an observation, tokenised on its own, cut to the episode's token budget (which then ends it)."""
        room = limits.episode_tokens - len(self.response_ids)
        ids = encode(text)
        if len(ids) >= room:
            ids, self.done, self.truncated = ids[:room], True, True
        self.response_ids += ids
        self.logprobs += [0.0] * len(ids)  # never read: the loss mask is 0
        self.loss_mask += [0] * len(ids)
        self.texts.append(text)
        self.env_tokens += len(ids)

    def fail(self, failure: Contained) -> None:
        """The environment raised, returned garbage, hung or crashed: the episode ends and scores 0."""
        self.done, self.rewards, self.failure = True, [0.0], failure
        self.info = {"answer": None, "format_ok": False, "timed_out": failure.timed_out, "error": failure.error}

    def reward(self, mode: str) -> float:
        """--episode_reward: the final step's reward (`last`) or the sum of its steps' (`sum`); 0 without steps."""
        if not self.rewards:
            return 0.0
        return self.rewards[-1] if mode == "last" else sum(self.rewards)


def run_episodes(
    prototype: Environment,
    generate: Generate,
    call: Call,
    encode: Callable[[str], list[int]],
    sampling: Callable[[int | None, int], Any],
    limits: Limits,
    prompt_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    references: Sequence[Any],
    seeds: Sequence[int | None],
    n: int,
) -> list[Episode]:
    """`n` episodes per prompt (each prompt's contiguous), each with a copy of `prototype`.

    `sampling(seed, max_tokens)` gives one request's SamplingParams (n=1). Episode k of a prompt with
    seed s has seed s + k, the seed vLLM gives the k-th of n samples of one request: an environment that
    ends after one step samples exactly what the single-turn path does.
    """
    episodes = [
        Episode(i, None if seed is None else seed + k, copy.deepcopy(prototype))
        for i, seed in enumerate(seeds)
        for k in range(n)
    ]
    arguments = [(prompts[e.prompt], references[e.prompt]) for e in episodes]
    for episode, result in zip(episodes, call([e.environment for e in episodes], "reset", arguments), strict=True):
        if _settled(episode, result) and result[1]:
            episode.observe(result[1], encode, limits)
    for turn in range(limits.max_turns):
        active = [e for e in episodes if not e.done]
        if not active:
            break
        requests = [list(prompt_ids[e.prompt]) + e.response_ids for e in active]
        params = [
            sampling(turn_seed(e.seed, turn), min(limits.turn_tokens, limits.episode_tokens - len(e.response_ids)))
            for e in active
        ]
        samples = [group[0] for group in generate(requests, params)]
        for episode, sample in zip(active, samples, strict=True):
            episode.act(sample)
        results = call([e.environment for e in active], "step", [(s.text,) for s in samples])
        for episode, result in zip(active, results, strict=True):
            if _settled(episode, result):
                _take(episode, result[1], encode, limits, last_turn=turn == limits.max_turns - 1)
    return episodes


def _settled(episode: Episode, result: tuple[Environment, Any] | Contained) -> bool:
    """Keep the environment as the call left it; False (and the episode failed) if the call failed."""
    if isinstance(result, Contained):
        episode.fail(result)
        return False
    episode.environment = result[0]
    return True


def _take(episode: Episode, step: Step, encode: Callable[[str], list[int]], limits: Limits, *, last_turn: bool) -> None:
    """Record the environment's step; end the episode where it says so or a limit is reached."""
    episode.rewards.append(step.reward)
    episode.info = step.info
    episode.totals.update(
        {k: v for k, v in step.info.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    if step.done:
        episode.done = True
        return
    if step.observation:
        episode.observe(step.observation, encode, limits)
    if not episode.done and (last_turn or len(episode.response_ids) >= limits.episode_tokens):
        episode.done = episode.truncated = True
