"""A complete custom task: integer answers stated as "Answer: N".

Data, one JSON object per line:  {"question": "What is 17 * 23?", "answer": "391"}
Train with it:  python -m oat_cpgd.experiment.run_cpgd --oracle examples.my_oracle:IntegerAnswerOracle ...
"""

import re
from typing import Any

from oat_cpgd.oracles import RewardOracle

ANSWER = re.compile(r"Answer:\s*(-?\d[\d,]*)")


class IntegerAnswerOracle(RewardOracle):
    """1.0 when the last "Answer: N" equals the reference; `format_reward` when N is wrong."""

    def __init__(self, format_reward: float = 0.1, **options: Any) -> None:
        # options: timeout_s, num_workers, incorrect_reward
        super().__init__(format_reward=format_reward, **options)

    def reward(self, prompt: str, response: str, reference: Any) -> tuple[float, dict]:
        matches = ANSWER.findall(response)
        if not matches:
            return self.incorrect_reward, {"answer": None, "format_ok": False}
        answer = matches[-1].replace(",", "")
        correct = int(answer) == int(reference)
        # score(): 1.0 if correct, else format_reward if well-formed, else incorrect_reward.
        return self.score(correct, format_ok=True), {"answer": answer, "format_ok": True}
