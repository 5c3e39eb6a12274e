"""oat_cpgd: online RL of language models with rule-based rewards (PPO, GRPO, Dr. GRPO, CPGD)."""
