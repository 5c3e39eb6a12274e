"""Actors: vLLM engines that sample responses and score them with an oracle."""

from oat_cpgd.actors.actor import Actor, Sample

__all__ = ["Actor", "Sample"]
