"""Rule-based reward oracles; add a task by subclassing `RewardOracle`."""

from oat_cpgd.oracles.base import CORRECT_REWARD, Info, RewardOracle
from oat_cpgd.oracles.countdown import CountdownOracle
from oat_cpgd.oracles.gsm8k import GSM8KOracle
from oat_cpgd.oracles.math_boxed import MathOracle
from oat_cpgd.oracles.registry import ORACLES, get_oracle, oracle_class, oracle_from_flags, register_oracle

__all__ = [
    "CORRECT_REWARD",
    "ORACLES",
    "CountdownOracle",
    "GSM8KOracle",
    "Info",
    "MathOracle",
    "RewardOracle",
    "get_oracle",
    "oracle_class",
    "oracle_from_flags",
    "register_oracle",
]
