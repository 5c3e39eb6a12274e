"""Environments for the tests, importable by the oracle's spawned workers: one that talks for a fixed
number of turns, and ones that fail in each way an environment can."""

import os
import time

from oat_cpgd.environments import Environment, Step


class Chatty(Environment):
    """Three model turns: observations that tokenise differently alone than after the text before them
    (the first follows a prompt that ends in a space: "answer" alone is not " answer" in context), and a
    reward of 0.25 per step; counts its steps in `steps`."""

    metrics = ("steps",)

    def reset(self, prompt, reference):
        super().reset(prompt, reference)
        self.turn = 0
        return "answer"

    def step(self, action):
        self.turn += 1
        return Step(f"tool: {self.turn} ", 0.25, self.turn == 3, {"steps": 1})


class ToolThenAnswer(Environment):
    """Two model turns: the first gets an observation back, the second is scored by the run's oracle."""

    def step(self, action):
        if not getattr(self, "answered_tool", False):
            self.answered_tool = True
            return Step("tool: 42 ", 0.0, False)
        reward, _ = self.oracle.check(self.prompt, action, self.reference)
        return Step(None, reward, True)


class Raises(Environment):
    def step(self, action):
        raise RuntimeError("broken environment")


class Hangs(Environment):
    def step(self, action):
        time.sleep(60)


class ReturnsGarbage(Environment):
    def step(self, action):
        return Step(None, float("nan"), True)


class Exits(Environment):
    def step(self, action):
        os._exit(3)


class NotAnEnvironment:
    pass
