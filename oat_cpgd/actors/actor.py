"""The actor: a vLLM engine that samples responses and an oracle that scores them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from oat_cpgd.actors.episodes import Episode, Limits, run_episodes
from oat_cpgd.args import Args
from oat_cpgd.console import send_role_output_to_log
from oat_cpgd.environments import call_environments, environment_from_flags
from oat_cpgd.oracles import oracle_from_flags
from oat_cpgd.placement import Placement
from oat_cpgd.types import Trajectory

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated response."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool
    """Stopped by the length limit rather than a stop token."""


def configure_vllm_env(args: Args, placement: Placement) -> None:
    """vLLM reads these at import: set them before the engine is built."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # per-request and per-sync INFO lines drown the progress bar
    # Calls into an engine core in its own process (CUDA's default) are msgpack-encoded
    # (vllm/v1/serial_utils.py). The CUDA-IPC weight handles, torch's `reduce_tensor` arguments, hold a
    # torch.dtype and the tensor and storage classes, which the encoder refuses ("Object of type ... is
    # not serializable") unless this is 1; OpenRLHF sets it too (openrlhf/trainer/ray/vllm_engine/base.py).
    # Set on every device, so that the CPU runs encode as CUDA ones do.
    insecure = "VLLM_ALLOW_INSECURE_SERIALIZATION"
    if placement.on_cuda and placement.collocate and os.environ.get(insecure, "1") != "1":
        # The CUDA-IPC sync cannot work without it: rather than fail at the first sync, override the
        # user's value, and say so.
        logger.warning(
            "%s=%s overridden with 1: collocated weight sync sends CUDA-IPC handles", insecure, os.environ[insecure]
        )
        os.environ[insecure] = "1"
    os.environ.setdefault(insecure, "1")
    if not placement.on_cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.vllm_cpu_kvcache_gb))
        # In-process engine core: 3-5 s start-up on CPU instead of 25-40 s.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def whole_prefills(max_model_len: int) -> dict[str, Any]:
    """vLLM engine options for CPU: no chunked prefill, room for the longest prompt in one step.

    When a prompt's prefill is split over engine steps, vLLM rewinds the seeded request's random
    generator, which torch's CPU generators cannot do: a rollout whose prompt tokens exceed the
    step budget (8 GSM8K prompts x 8 samples already do) crashed with "CPU Generator does not use
    offset".
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(4096, max_model_len)}


def tensor_parallel_workers(placement: Placement, actor_index: int) -> dict[str, Any]:
    """vLLM engine options that put a tensor-parallel engine's workers in this actor's bundles.

    vLLM's Ray executor starts a worker per GPU in the actor's placement group (captured by the
    actor, see oat_cpgd.cluster.spawn_actors), in the bundles VLLM_RAY_BUNDLE_INDICES names, each
    asking VLLM_RAY_PER_WORKER_GPUS of its GPU; as OpenRLHF does
    (openrlhf/trainer/ray/vllm_engine/base.py, factory.py). One GPU: the engine runs in this process.
    """
    if placement.tensor_parallel_size == 1:
        return {}
    os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, placement.actor_bundles[actor_index]))
    os.environ["VLLM_RAY_PER_WORKER_GPUS"] = str(placement.gpu_share)
    # The workers pick their GPU by local rank; Ray's restriction of this process (which asked for no
    # GPU) must not hide them (OpenRLHF pops it likewise).
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    # vLLM's engine-core process joins this Ray cluster to start the workers (vLLM PR 21540).
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    return {"distributed_executor_backend": "ray"}


def engine_options(args: Args, placement: Placement, actor_index: int) -> dict[str, Any]:
    """`vllm.LLM`'s options for actor `actor_index` (benchmark/jobs/bare_generate.py builds its bare engine
    from them too); configure_vllm_env must have run."""
    from vllm.config.weight_transfer import WeightTransferConfig

    from oat_cpgd.weight_sync import register_gloo_backend, transfer_backend

    # vLLM registers it in its own processes through our plugin entry point; this covers the
    # in-process engine (the CPU default) of a checkout whose entry points are not installed.
    register_gloo_backend()
    on_cuda = placement.on_cuda
    return dict(
        model=args.pretrain,
        tokenizer=args.tokenizer,
        dtype="bfloat16" if args.bf16 else "float32",
        seed=args.seed + actor_index,
        max_model_len=args.max_model_len,
        enforce_eager=not on_cuda,
        gpu_memory_utilization=args.vllm_gpu_ratio or placement.vllm_gpu_ratio,
        tensor_parallel_size=placement.tensor_parallel_size,
        **tensor_parallel_workers(placement, actor_index),
        enable_prefix_caching=args.enable_prefix_caching,
        **({} if on_cuda else whole_prefills(args.max_model_len)),
        enable_sleep_mode=on_cuda and placement.collocate,
        # Log-probs after temperature: those of the distribution the learner optimises.
        logprobs_mode="processed_logprobs",
        weight_transfer_config=WeightTransferConfig(backend=transfer_backend(on_cuda, placement.collocate)),
    )


def _reset_weight_transfer(worker) -> None:
    """Run in each vLLM worker: vLLM refuses a new update, or to shut the engine down, while one is
    marked active, and only a successful finish unmarks it."""
    if worker.weight_transfer_engine is None:
        return
    if worker._weight_update_active:
        worker.weight_transfer_engine.reset_weight_update_target()
        worker._weight_update_active = False
    worker.shutdown_weight_transfer_engine()


def episode_metrics(
    episodes: list[Episode], trajectories: list[Trajectory], times: dict[str, float], counters: Sequence[str]
) -> dict[str, float]:
    """A multi-turn rollout's actor metrics: the single-turn ones (generated tokens are the model's), and per
    episode its turns, its environment's `counters` (e.g. tool calls) and failures; the environment's share
    of the response tokens."""
    count = max(len(episodes), 1)
    generated = sum(sum(e.loss_mask) for e in episodes)
    tokens = sum(len(e.response_ids) for e in episodes)
    return {
        "actor/generate_time": times["generate"],
        "actor/verify_time": times["environment"],
        "actor/generated_tokens": float(generated),
        "actor/tokens_per_s": generated / max(times["generate"], 1e-9),
        "actor/reward_mean": sum(t.reward for t in trajectories) / count,
        "actor/truncated_frac": sum(e.truncated for e in episodes) / count,
        "actor/response_len": tokens / count,
        "actor/turns": sum(e.turns for e in episodes) / count,
        "actor/env_token_frac": sum(e.env_tokens for e in episodes) / max(tokens, 1),
        "actor/env_errors": float(sum(e.failure is not None and not e.failure.timed_out for e in episodes)),
        "actor/env_timeouts": float(sum(e.failure is not None and e.failure.timed_out for e in episodes)),
        **{f"actor/{name}": sum(e.totals[name] for e in episodes) / count for name in counters},
    }


class Actor:
    """Generates K responses per prompt with vLLM and scores them with the oracle (with --env: runs
    K episodes per prompt in the environment)."""

    def __init__(self, args: Args, placement: Placement, actor_index: int = 0) -> None:
        send_role_output_to_log()  # before vLLM starts (its engine core inherits the file)
        configure_vllm_env(args, placement)
        import vllm

        self.args, self.actor_index = args, actor_index
        self.on_cuda = placement.on_cuda
        collocated_on_gpu = self.on_cuda and placement.collocate
        self.llm = vllm.LLM(**engine_options(args, placement, actor_index))
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0  # learning steps behind the loaded weights (set by the loop after each sync)
        self.sleep_mode = collocated_on_gpu
        if placement.collocate and not self.sleep_mode:
            logger.info("vLLM has no sleep mode on this device: actor sleep/wake_up are no-ops")
        self.oracle = oracle_from_flags(args, num_workers=args.oracle_workers)
        self.train_sampling = self.sampling_params(
            n=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=args.generate_max_length,
            stop=args.stop,
        )
        # With --env, each prompt's K responses are episodes, run in the oracle's workers.
        self.environment = environment_from_flags(args) if args.env else None

    @staticmethod
    def sampling_params(
        *, n: int, temperature: float, top_p: float, max_tokens: int, top_k: int = -1, stop: Sequence[str] = ()
    ):
        import vllm

        # logprobs=0: exactly the sampled token's log-prob. A stop string stays in the response
        # (the oracle may need it, e.g. a closing </answer>).
        return vllm.SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            logprobs=0,
            stop=list(stop),
            include_stop_str_in_output=True,
        )

    @staticmethod
    def seeded(sampling, seed: int | None):
        if seed is None:
            return sampling
        params = sampling.clone()
        params.seed = seed
        return params

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling) -> list[list[Sample]]:
        """Sample `sampling.n` responses for each prompt (given as token ids); `sampling` is one
        SamplingParams for all prompts or one per prompt."""
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], sampling, use_tqdm=False)
        return [
            [
                Sample(
                    token_ids=list(completion.token_ids),
                    logprobs=[
                        step[token].logprob
                        for step, token in zip(completion.logprobs, completion.token_ids, strict=False)
                    ],
                    text=completion.text,
                    truncated=completion.finish_reason == "length",
                )
                for completion in output.outputs
            ]
            for output in outputs
        ]

    def score(
        self, groups: list[list[Sample]], prompts: Sequence[str], references: Sequence[Any]
    ) -> tuple[list[tuple[int, Sample]], list[float], list[dict]]:
        """Score every sample against its prompt's reference in one oracle batch.

        Returns the (prompt position, sample) pairs in order, with their rewards and oracle infos.
        """
        flat = [(i, sample) for i, group in enumerate(groups) for sample in group]
        rewards, infos = self.oracle.get_reward(
            [prompts[i] for i, _ in flat], [s.text for _, s in flat], [references[i] for i, _ in flat]
        )
        return flat, rewards, infos

    def step(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompts: Sequence[str],
        references: Sequence[Any],
        prompt_indices: Sequence[int],
        seeds: Sequence[int | None],
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """Generate, score, and return trajectories (each prompt's K responses contiguous) and timings.

        `seeds`: one per prompt; a prompt's K samples are then a function of its seed and the weights
        alone, whatever else is in the batch (None: the engine's random stream).
        """
        if self.environment is not None:
            return self.episode_step(prompt_ids, prompts, references, prompt_indices, seeds)
        start = time.perf_counter()
        sampling = [self.seeded(self.train_sampling, seed) for seed in seeds]
        samples = self.generate(prompt_ids, sampling)
        generate_time = time.perf_counter() - start

        start = time.perf_counter()
        flat, rewards, infos = self.score(samples, prompts, references)
        verify_time = time.perf_counter() - start

        # The oracle's rewards, unshaped: the learner adds the penalties (oat_cpgd.algorithms.shaped_rewards)
        # from each response's truncation and length.
        trajectories = [
            Trajectory(
                prompt_index=prompt_indices[i],
                prompt_ids=list(prompt_ids[i]),
                response_ids=s.token_ids,
                actor_logprobs=s.logprobs,
                reward=reward,
                truncated=s.truncated,
                weight_version=self.weight_version,
                prompt=prompts[i],
                response=s.text,
                info=info,
            )
            for (i, s), reward, info in zip(flat, rewards, infos, strict=True)
        ]
        generated = sum(len(s.token_ids) for _, s in flat)
        # The oracle's counts of timeouts, errors and well-formed responses; its reward mean and
        # verify time are the actor's own reward_mean (the oracle's rewards) and verify_time.
        oracle_counts = {
            k.replace("oracle/", "actor/oracle_"): v
            for k, v in self.oracle.last_metrics.items()
            if k not in ("oracle/reward_mean", "oracle/verify_time")
        }
        metrics = {
            "actor/generate_time": generate_time,
            "actor/verify_time": verify_time,
            "actor/generated_tokens": float(generated),
            "actor/tokens_per_s": generated / max(generate_time, 1e-9),
            "actor/reward_mean": sum(rewards) / max(len(rewards), 1),
            "actor/truncated_frac": sum(s.truncated for _, s in flat) / max(len(flat), 1),
            "actor/response_len": generated / max(len(flat), 1),
            **oracle_counts,
        }
        return trajectories, metrics

    def episodes(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompts: Sequence[str],
        references: Sequence[Any],
        seeds: Sequence[int | None],
        *,
        n: int,
        temperature: float,
        top_p: float,
        top_k: int,
        max_tokens: int,
    ) -> tuple[list[Episode], dict[str, float]]:
        """`n` episodes of --env per prompt (oat_cpgd.actors.episodes), with their generation and environment times."""
        args, environment = self.args, self.environment
        turn = self.sampling_params(
            n=1,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop=args.stop + environment.stop,
        )
        times = {"generate": 0.0, "environment": 0.0}

        def timed(name: str, function: Callable) -> Callable:
            def call(*arguments: Any) -> Any:
                start = time.perf_counter()
                try:
                    return function(*arguments)
                finally:
                    times[name] += time.perf_counter() - start

            return call

        def sampling(seed: int | None, turn_tokens: int):
            params = turn.clone()
            params.max_tokens = turn_tokens
            return self.seeded(params, seed)

        episodes = run_episodes(
            environment,
            timed("generate", self.generate),
            timed("environment", partial(call_environments, self.oracle)),
            partial(self.tokenizer.encode, add_special_tokens=False),
            sampling,
            Limits(args.max_turns, max_tokens, args.max_episode_tokens),
            prompt_ids,
            prompts,
            references,
            seeds,
            n,
        )
        return episodes, times

    def episode_step(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompts: Sequence[str],
        references: Sequence[Any],
        prompt_indices: Sequence[int],
        seeds: Sequence[int | None],
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """`step` with --env: each prompt's K episodes as trajectories whose loss mask leaves out the
        environment's tokens, and the episodes' metrics."""
        args = self.args
        episodes, times = self.episodes(
            prompt_ids,
            prompts,
            references,
            seeds,
            n=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=args.generate_max_length,
        )
        trajectories = [
            Trajectory(
                prompt_index=prompt_indices[e.prompt],
                prompt_ids=list(prompt_ids[e.prompt]),
                response_ids=e.response_ids,
                actor_logprobs=e.logprobs,
                reward=e.reward(args.episode_reward),
                truncated=e.truncated,
                weight_version=self.weight_version,
                prompt=prompts[e.prompt],
                response="".join(e.texts),
                info={
                    "answer": None,
                    "format_ok": False,
                    "timed_out": False,
                    "error": None,
                    **e.info,
                    "turns": e.turns,
                },
                loss_mask=e.loss_mask,
            )
            for e in episodes
        ]
        return trajectories, episode_metrics(episodes, trajectories, times, self.environment.metrics)

    def evaluate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompts: Sequence[str],
        references: Sequence[Any],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
    ) -> list[dict[str, list]]:
        """Answer eval prompts `n` times each and score them; per prompt: responses, rewards, answers, lengths."""
        # Greedy answers are all alike (and vLLM refuses n > 1 with temperature 0): decode once, count n times.
        sampled = 1 if temperature == 0 else n
        results = [{"responses": [], "rewards": [], "answers": [], "lengths": []} for _ in prompt_ids]
        if self.environment is not None:
            episodes, _ = self.episodes(
                prompt_ids,
                prompts,
                references,
                [None] * len(prompt_ids),
                n=sampled,
                temperature=temperature,
                top_p=top_p,
                top_k=-1,
                max_tokens=max_tokens,
            )
            for e in episodes:
                for _ in range(n // sampled):
                    results[e.prompt]["responses"].append("".join(e.texts))
                    results[e.prompt]["rewards"].append(e.reward(self.args.episode_reward))
                    results[e.prompt]["answers"].append(e.info.get("answer"))
                    results[e.prompt]["lengths"].append(len(e.response_ids))
            return results
        sampling = self.sampling_params(
            n=sampled, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=self.args.stop
        )
        groups = [group * (n // sampled) for group in self.generate(prompt_ids, sampling)]
        flat, rewards, infos = self.score(groups, prompts, references)
        for (i, sample), reward, info in zip(flat, rewards, infos, strict=True):
            results[i]["responses"].append(sample.text)
            results[i]["rewards"].append(reward)
            results[i]["answers"].append(info.get("answer"))
            results[i]["lengths"].append(len(sample.token_ids))
        return results

    # ------------------------------------------------------------------ weights
    # vLLM's weight-sync surface (a `VLLMWeightSyncClient`), driven by the learners' transfer
    # engine (oat_cpgd.weight_sync): new weights are loaded in place, the engine keeps running.
    def probe_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """The engine's log-probs of token_ids[1:], each given its prefix (the weight-sync check's probe)."""
        import vllm

        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        (output,) = self.llm.generate([{"prompt_token_ids": list(token_ids)}], params, use_tqdm=False)
        steps = output.prompt_logprobs[1:]  # the first token has no prefix
        return [step[token].logprob for step, token in zip(steps, token_ids[1:], strict=True)]

    def weights_digest(self) -> list:
        """Per vLLM worker, the digest of every slice of the learner's tensors it holds (oat_cpgd.weight_digest)."""
        from oat_cpgd.weight_digest import from_worker, worker_digests

        return [from_worker(rows) for rows in self.llm.collective_rpc(worker_digests)]

    def set_weight_version(self, version: int) -> None:
        """The learning steps behind the weights just loaded; rollouts sampled from now on carry it."""
        self.weight_version = version

    def weight_workers(self) -> int:
        """vLLM workers in this engine: each takes one rank of the broadcast group."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def reset_weight_transfer(self) -> None:
        """Before joining a new transfer (after a role was restarted): drop an update the old one left
        half done, and shut its communicator down."""
        self.llm.collective_rpc(_reset_weight_transfer)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    # ------------------------------------------------------------------ collocation
    # vLLM has no sleep mode on CPU: there these are no-ops, called in the same order as on GPUs.
    def sleep(self) -> None:
        """Free the GPU for the collocated learner: level 1 moves the weights to host memory and
        drops the KV cache (level 2 would drop the weights, lost when a step does not sync)."""
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Bring back `tags` of the engine's memory ("weights", "kv_cache"; default all); the engine
        schedules again once all are back."""
        if self.sleep_mode:
            self.llm.wake_up(list(tags) if tags else None)

    def close(self) -> None:
        self.oracle.close()
