"""Entry points: `python -m oat_cpgd.experiment.run_cpgd` (and run_ppo, run_grpo)."""
