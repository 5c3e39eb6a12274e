"""R1-zero style RL on maths or CountDown (oat's recipe), with any of ppo/grpo/drgrpo/cpgd.

    python examples/r1_zero_math.py --critic_type grpo --oracle countdown --prompt_template countdown ...

Defaults to CPGD; `--critic_type` picks another algorithm with the same flags.
"""

from oat_cpgd.args import CPGDArgs, parse_args
from oat_cpgd.interface import main

if __name__ == "__main__":
    main(parse_args(CPGDArgs, default=CPGDArgs(prompt_template="r1_zero", oracle="math")))
