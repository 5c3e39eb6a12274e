"""The vLLM actor on its own: real engine, tiny model, real oracle."""

import pytest
import torch
from support.greedy import assert_same_greedy, hf_greedy
from support.sync import broadcast_to
from transformers import AutoModelForCausalLM, AutoTokenizer

from oat_cpgd.actors import Actor
from oat_cpgd.algorithms import top_k_top_p_logprobs
from oat_cpgd.args import PPOArgs
from oat_cpgd.learners.weights import ModelWeights
from oat_cpgd.placement import local_nodes, plan_placement

pytestmark = pytest.mark.slow  # every test here drives one vLLM engine

MAX_NEW = 12


@pytest.fixture(scope="module")
def actor(tiny_model_path):
    args = PPOArgs(
        pretrain=str(tiny_model_path),
        oracle="gsm8k",
        critic_type="grpo",
        num_samples=3,
        generate_max_length=MAX_NEW,
        prompt_max_length=320,  # room for long_prompts
        eval_generate_max_length=MAX_NEW,
        rollout_batch_size=2,
        train_batch_size=2,
        # Training penalties: the learner shapes the rewards with them, never the actor.
        non_stop_penalty=-0.5,
        overlong_buffer_len=4,
        oracle_workers=1,
    )
    args.resolve()
    actor = Actor(args, plan_placement(local_nodes(), args))
    yield actor
    actor.close()


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    texts = ["What is 12 plus 30?", "Natalia sold clips to 48 of her friends.", "Using the numbers [3, 5, 7]"]
    return [tokenizer(t)["input_ids"] for t in texts]


def greedy(actor: Actor, prompt_ids, max_new=MAX_NEW):
    params = Actor.sampling_params(n=1, temperature=0.0, top_p=1.0, max_tokens=max_new)
    return [group[0].token_ids for group in actor.generate(prompt_ids, params)]


def test_greedy_matches_transformers(actor, prompt_ids, tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    vllm_out = greedy(actor, prompt_ids)
    assert_same_greedy(vllm_out, hf_greedy(model, prompt_ids, MAX_NEW), model, MAX_NEW)


def test_samples_logprobs_and_truncation(actor, prompt_ids):
    groups = actor.generate(prompt_ids, actor.train_sampling)
    assert [len(g) for g in groups] == [3, 3, 3]
    for sample in (s for g in groups for s in g):
        assert len(sample.logprobs) == len(sample.token_ids) >= 1
        assert all(lp <= 0.0 for lp in sample.logprobs)
        assert sample.truncated == (
            len(sample.token_ids) == MAX_NEW and actor.tokenizer.eos_token_id not in sample.token_ids
        )
    one_token = Actor.sampling_params(n=1, temperature=1.0, top_p=1.0, max_tokens=1)
    flagged = [g[0] for g in actor.generate(prompt_ids, one_token)]
    assert all(s.truncated == (s.token_ids[0] != actor.tokenizer.eos_token_id) for s in flagged)


@pytest.mark.parametrize(("top_k", "top_p"), [(-1, 0.7), (5, 1.0), (40, 0.9)])
def test_truncated_sampling_logprobs_are_what_the_learner_computes(actor, prompt_ids, tiny_model_path, top_k, top_p):
    """With top-k/top-p, vLLM reports log-probs renormalised over the kept tokens: exactly what
    top_k_top_p_logprobs gives on the model's logits, and not the full-vocabulary ones."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    params = Actor.sampling_params(n=2, temperature=1.2, top_p=top_p, top_k=top_k, max_tokens=MAX_NEW)
    gaps = []
    for ids, group in zip(prompt_ids, actor.generate(prompt_ids, params), strict=True):
        for sample in group:
            full_ids = torch.tensor([ids + sample.token_ids])
            with torch.no_grad():
                logits = model(full_ids).logits[0, len(ids) - 1 : -1] / 1.2
            labels = torch.tensor(sample.token_ids)
            expected = top_k_top_p_logprobs(logits, labels, top_k=top_k, top_p=top_p)
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)
            full = top_k_top_p_logprobs(logits, labels)
            gaps.append((expected - full).mean().item())
    assert min(gaps) > 0.05  # the kept tokens' mass is well below 1 for this near-uniform model


def test_step_reports_the_oracles_rewards_and_what_the_learner_shapes_them_by(actor, prompt_ids):
    """The oracle's rewards, unshaped despite the penalty flags, with each response's truncation and
    length: the learner adds the penalties (oat_cpgd.algorithms.shaped_rewards)."""
    trajectories, metrics = actor.step(prompt_ids, ["a", "b", "c"], ["42", "72", "1"], [10, 11, 12], [None] * 3)
    assert len(trajectories) == 9
    assert [t.prompt_index for t in trajectories] == [10] * 3 + [11] * 3 + [12] * 3  # groups contiguous
    for t in trajectories:
        assert t.prompt_ids == prompt_ids[[10, 11, 12].index(t.prompt_index)]
        assert len(t.actor_logprobs) == len(t.response_ids)
        assert t.reward in (0.0, 1.0)  # GSM8K: correct or not (format_reward 0), no penalty
        assert t.truncated == (len(t.response_ids) == MAX_NEW and actor.tokenizer.eos_token_id not in t.response_ids)
        assert {"answer", "format_ok", "timed_out"} <= set(t.info)
    assert any(t.truncated for t in trajectories)  # the penalties' condition occurs (12 tokens rarely end)
    for key in ("actor/generate_time", "actor/verify_time", "actor/tokens_per_s"):
        assert metrics[key] > 0, (key, metrics)
    assert metrics["actor/reward_mean"] == pytest.approx(sum(t.reward for t in trajectories) / 9)
    # The oracle's counts join them; its own reward mean and verify time would repeat the two above.
    assert metrics["actor/oracle_timeouts"] == 0 and metrics["actor/oracle_format_ok"] >= 0
    assert "actor/oracle_reward_mean" not in metrics and "actor/oracle_verify_time" not in metrics


def test_step_labels_trajectories_with_the_weight_version(actor, prompt_ids):
    """Trajectories carry the weight version set after a sync."""
    actor.set_weight_version(3)
    try:
        trajectories, _ = actor.step(prompt_ids, ["a", "b", "c"], ["42", "72", "1"], [10, 11, 12], [None] * 3)
    finally:
        actor.set_weight_version(0)
    assert {t.weight_version for t in trajectories} == {3}


def test_seeded_samples_depend_on_the_seed_alone(actor, prompt_ids):
    """A prompt's K samples are a function of its seed (and the weights): the same in another batch and
    another order, different under another seed; unseeded, two calls differ."""

    def responses(order, seeds):
        trajectories, _ = actor.step(
            [prompt_ids[i] for i in order], ["q"] * len(order), ["1"] * len(order), order, seeds
        )
        by_prompt = {}
        for t in trajectories:
            by_prompt.setdefault(t.prompt_index, []).append((t.response_ids, t.actor_logprobs))
        return by_prompt

    both = responses([0, 1, 2], [7, 8, 9])
    alone = responses([2, 1], [9, 8])
    assert alone[2] == both[2] and alone[1] == both[1]
    assert len({tuple(ids) for ids, _ in both[0]}) > 1  # the K samples of one seed differ from each other
    assert responses([0], [10])[0] != both[0]
    assert responses([0], [None])[0] != responses([0], [None])[0]


def test_seeded_samples_of_prompts_beyond_one_engine_step(actor, tiny_model_path):
    """14 prompts x 3 samples x 120 tokens exceed the 4096 prompt tokens vLLM computes in one step:
    seeded requests (every rollout's) still sample, and a prompt's samples are those it gets alone.
    With chunked prefill on CPU this crashed ("CPU Generator does not use offset")."""
    generator = torch.Generator().manual_seed(0)
    vocab = AutoTokenizer.from_pretrained(tiny_model_path).vocab_size
    prompts = [torch.randint(3, vocab, (120,), generator=generator).tolist() for _ in range(14)]
    assert 3 * sum(map(len, prompts)) > 4096
    seeds = list(range(100, 114))
    trajectories, _ = actor.step(prompts, ["q"] * 14, ["1"] * 14, list(range(14)), seeds)
    alone, _ = actor.step(prompts[-1:], ["q"], ["1"], [13], seeds[-1:])
    assert [t.response_ids for t in trajectories[-3:]] == [t.response_ids for t in alone]


def perturbed(model_path, seed: int):
    """The model with noise on every weight; through parameters(), not state_dict(), so the tied
    lm_head gets no noise of its own."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def test_update_weights_changes_generation(actor, prompt_ids, tiny_model_path):
    before = greedy(actor, prompt_ids)
    model = perturbed(tiny_model_path, seed=1)
    broadcast_to(actor, ModelWeights(model))
    after = greedy(actor, prompt_ids)
    assert after != before
    assert_same_greedy(after, hf_greedy(model, prompt_ids, MAX_NEW), model, MAX_NEW)


def long_prompts(tiny_model_path, count: int = 2, length: int = 300) -> list[list[int]]:
    """Prompts of two whole prefix-cache blocks and more (vLLM's CPU blocks hold 128 tokens; whole ones are shared)."""
    generator = torch.Generator().manual_seed(2)
    vocab = AutoTokenizer.from_pretrained(tiny_model_path).vocab_size
    return [torch.randint(3, vocab, (length,), generator=generator).tolist() for _ in range(count)]


def test_a_prompts_samples_share_its_prefill_and_are_those_sampled_without_the_cache(actor, tiny_model_path):
    """Prefix caching is on by default: a prompt's K seeded samples reuse its cached blocks within one call,
    and are exactly the samples (and log-probs) of the same requests made without reading the cache."""
    prompts = long_prompts(tiny_model_path)
    requests = [{"prompt_token_ids": ids} for ids in prompts]

    def rollout(read_cache: bool):
        actor.llm.reset_prefix_cache()  # as after a weight sync: only the call's own prompts can hit
        sampling = [actor.seeded(actor.train_sampling, seed) for seed in (5, 6)]
        for params in sampling:
            params.skip_reading_prefix_cache = not read_cache
        outputs = actor.llm.generate(requests, sampling, use_tqdm=False)
        samples = [[(list(c.token_ids), [step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)])
                    for c in o.outputs] for o in outputs]  # fmt: skip
        return [o.num_cached_tokens for o in outputs], samples

    uncached_hits, uncached = rollout(read_cache=False)
    cached_hits, cached = rollout(read_cache=True)
    assert uncached_hits == [0, 0] and cached_hits == [256, 256]  # the two whole blocks of each 300-token prompt
    assert cached == uncached
    assert all(len({tuple(ids) for ids, _ in group}) == 3 for group in cached)  # K distinct samples, not copies


def test_a_weight_update_resets_the_prefix_cache_and_the_probe_scores_every_token(actor, tiny_model_path):
    """Blocks cached under the old weights are not reused after a sync (Actor.finish_weight_update resets the
    cache); the sync check's probe, whose prefix is then cached, still gets every prompt token's log-prob."""
    prompts = long_prompts(tiny_model_path)
    greedy(actor, prompts)  # caches the prompts' blocks under the current weights
    model = perturbed(tiny_model_path, seed=3)
    broadcast_to(actor, ModelWeights(model))
    after = greedy(actor, prompts)
    assert_same_greedy(after, hf_greedy(model, prompts, MAX_NEW), model, MAX_NEW)

    probe = prompts[0] + after[0]  # its first 256 tokens are in the cache now
    with torch.no_grad():
        logits = model(torch.tensor([probe])).logits[0, :-1]
    expected = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(probe[1:])[:, None])[:, 0]
    seen = torch.tensor(actor.probe_logprobs(probe))  # the length check is probe_logprobs' own (strict zip)
    assert torch.allclose(seen, expected, atol=1e-4)


def test_sleep_and_wake_up_are_noops_on_cpu(actor, prompt_ids):
    before = greedy(actor, prompt_ids)
    actor.sleep()
    actor.wake_up()
    assert greedy(actor, prompt_ids) == before


def test_stop_strings_end_the_response_and_stay_in_it(actor, prompt_ids):
    full = actor.generate(prompt_ids[:1], Actor.sampling_params(n=1, temperature=0.0, top_p=1.0, max_tokens=MAX_NEW))
    text = full[0][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a piece of what greedy decoding will write
    assert stop.strip()
    params = Actor.sampling_params(n=1, temperature=0.0, top_p=1.0, max_tokens=MAX_NEW, stop=[stop])
    stopped = actor.generate(prompt_ids[:1], params)[0][0]
    assert stopped.text.endswith(stop) and len(stopped.text) < len(text)
    assert not stopped.truncated


def test_evaluate_answers_each_prompt_n_times(actor, prompt_ids):
    results = actor.evaluate(
        prompt_ids, ["a", "b", "c"], ["42", "72", "1"], n=2, temperature=0.0, top_p=1.0, max_tokens=MAX_NEW
    )
    assert len(results) == 3
    for result in results:
        assert {k: len(v) for k, v in result.items()} == {"responses": 2, "rewards": 2, "answers": 2, "lengths": 2}
        assert result["responses"][0] == result["responses"][1]  # greedy: the same answer twice
        assert all(r in (0.0, 1.0) for r in result["rewards"]) and all(0 < n <= MAX_NEW for n in result["lengths"])
