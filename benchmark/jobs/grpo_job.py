"""The job benchmark/step_time.py times, defined once. Each trainer's script turns these into its
own settings: oat_cpgd's flags (step_time.run_oat), the learner's arguments
(learner_overhead.job_args) and TRL's GRPOConfig (trl_grpo.py). Plain Python: TRL's environment,
which has no oat_cpgd, imports it too."""

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
