"""CPGD, clipped policy gradient with policy drift: `python -m oat_cpgd.experiment.run_cpgd --help`."""

from oat_cpgd.args import CPGDArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.interface import main

if __name__ == "__main__":
    main(parse_args(CPGDArgs))
