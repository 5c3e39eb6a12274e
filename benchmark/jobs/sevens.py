"""The benchmark's reward: the share of the response's characters that are '7'. A task the random
tiny model learns within tens of steps, so a benchmark run also shows that each trainer learns."""

from oat_cpgd.oracles import RewardOracle


class SevensOracle(RewardOracle):
    def reward(self, prompt, response, reference):
        return response.count("7") / max(len(response), 1)
