"""PPO (critic + GAE): `python -m oat_cpgd.experiment.run_ppo --help`."""

from oat_cpgd.args import PPOArgs
from oat_cpgd.cli import train_command

if __name__ == "__main__":
    train_command(PPOArgs)
