"""A learner that shows what it restored, for tests/test_loop.py's LoRA resume (importable by Ray workers)."""

from pathlib import Path

import safetensors.torch

from oat_cpgd.learners import Learner


class AdapterRecordingLearner(Learner):
    """The real learner; after restoring a checkpoint, rank 0 writes the LoRA adapter it now trains
    to <run dir>/restored_adapter.safetensors (ZeRO-2: every rank holds it whole)."""

    def load_checkpoint(self, path: str) -> None:
        super().load_checkpoint(path)
        if self.rank == 0:
            adapter = {n: p.detach().clone() for n, p in self.policy.module.named_parameters() if p.requires_grad}
            safetensors.torch.save_file(adapter, Path(self.args.resume_dir) / "restored_adapter.safetensors")
