"""The job benchmark/step_time.py times, defined once. Each trainer's script turns these into its
own settings: oat_cpgd's flags (step_time.run_oat), the learner's arguments
(learner_overhead.job_args) and TRL's GRPOConfig (trl_grpo.py). Plain Python: TRL's environment,
which has no oat_cpgd, imports it too."""

import json

PROMPTS = 8
"""Prompts per optimizer step (8 chat-formatted GSM8K questions)."""
SAMPLES = 8
"""Responses per prompt."""
NEW_TOKENS = 32
"""Tokens generated per response."""
MICRO_BATCH = 8
"""Responses per forward/backward pass: 8 passes accumulated per optimizer step."""
LEARNING_RATE = 1e-3
"""Constant, no warm-up."""
TEMPERATURE = 1.0


def prompt_ids(tokenizer, data: str, count: int = PROMPTS) -> list[list[int]]:
    """The first `count` GSM8K questions of `data`, chat-formatted and tokenized (the bare halves of the
    step's floor and the learner's job use these; the trainers read the same questions themselves)."""
    with open(data) as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(count), f, strict=False)]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
