"""DeepSpeed learners: policy (and critic) updates from scored rollouts."""

from oat_cpgd.learners.learner import Learner

__all__ = ["Learner"]
