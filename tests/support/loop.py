"""Real classes the loop tests plug in (importable by Ray workers: the repo root is on their path)."""

import json
from pathlib import Path

from oat_cpgd.actors import Actor
from oat_cpgd.oracles import RewardOracle


class SevensOracle(RewardOracle):
    """Toy task that a random tiny model can learn fast: the share of the response's characters that are '7'."""

    def reward(self, prompt, response, reference):
        return response.count("7") / max(len(response), 1)


class LengthOracle(RewardOracle):
    """The response's length in characters / 64 (at most 1): every group's rewards differ, so every
    update moves the policy."""

    def reward(self, prompt, response, reference):
        return min(1.0, len(response) / 64)


GREEDY_PROMPTS = ["Using the numbers [3, 5, 7]", "What is 12 plus 30?"]


class GreedyRecordingActor(Actor):
    """The real actor; on close (after the final weight sync) it records greedy answers to GREEDY_PROMPTS."""

    def close(self) -> None:
        prompt_ids = [self.tokenizer(text)["input_ids"] for text in GREEDY_PROMPTS]
        params = Actor.sampling_params(n=1, temperature=0.0, top_p=1.0, max_tokens=16)
        answers = [group[0].token_ids for group in self.generate(prompt_ids, params)]
        out = Path(self.args.save_path) / self.args.wb_run_name / f"actor_greedy_{self.actor_index}.json"
        out.write_text(json.dumps({"prompt_ids": prompt_ids, "response_ids": answers}))
        super().close()
