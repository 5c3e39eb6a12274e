"""A training run whose learner pauses once mid-step, so a test can SIGKILL the run there.

    python tests/support/resume.py <run_ppo flags>

Before the run, the test writes the number of a learning step into `<run dir>/pause_at_step`.
Rank 0's learner then deletes that file when the step's update starts (its rollout is done and,
under --asynchronous, the next one is in flight), writes `paused_mid_step` and waits, so the kill
lands in the middle of the step. A resumed run finds no file and does not pause.
"""

import time
from pathlib import Path

from oat_cpgd.args import PPOArgs
from oat_cpgd.cli import parse_args
from oat_cpgd.interface import main
from oat_cpgd.learners import Learner


class PausingLearner(Learner):
    def learn(self, trajectories):
        self.learns = getattr(self, "learns", 0) + 1
        run_dir = Path(self.args.save_path) / self.args.wb_run_name
        request = run_dir / "pause_at_step"
        # A fresh run counts learns from step 1; a resumed one never finds the request.
        if self.rank == 0 and request.exists() and int(request.read_text()) == self.learns:
            request.unlink()
            (run_dir / "paused_mid_step").touch()
            time.sleep(600)
        return super().learn(trajectories)


if __name__ == "__main__":
    main(parse_args(PPOArgs), learner_cls=PausingLearner)
