"""GRPO, or Dr. GRPO with `--critic_type drgrpo`: `python -m oat_cpgd.experiment.run_grpo --help`."""

from oat_cpgd.args import PPOArgs
from oat_cpgd.cli import train_command

if __name__ == "__main__":
    train_command(PPOArgs, default=PPOArgs(critic_type="grpo"))
