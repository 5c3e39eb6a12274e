"""CPGD, clipped policy gradient with policy drift: `python -m oat_cpgd.experiment.run_cpgd --help`."""

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import train_command

if __name__ == "__main__":
    train_command(CPGDArgs)
