"""PPO (critic + GAE): `python -m oat_cpgd.experiment.run_ppo --help`."""

from oat_cpgd.args import PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.interface import main

if __name__ == "__main__":
    main(parse_args(PPOArgs))
