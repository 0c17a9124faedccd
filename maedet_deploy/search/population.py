"""The population: the best unique structures found so far, bounded in size.

Members live in a list (uniform parent choice is one index), a dict maps each
structure key to its position (dedupe in O(1)), and a min-heap ordered by
(score, arrival number) finds the member to drop. The arrival number makes the
order total, so ties resolve the same way in every run and after a resume.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..structure import Structure


@dataclass(frozen=True, slots=True)
class Member:
    score: float
    seq: int
    structure: Structure
    params: int
    flops: int
    layers: int

    def to_dict(self) -> dict:
        return {"score": self.score, "seq": self.seq, "params": self.params, "flops": self.flops,
                "layers": self.layers, "blocks": self.structure.to_dicts()}

    @classmethod
    def from_dict(cls, data: dict) -> "Member":
        return cls(float(data["score"]), int(data["seq"]), Structure.from_dicts(data["blocks"]),
                   int(data["params"]), int(data["flops"]), int(data["layers"]))


class Population:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.members: list[Member] = []
        self._position: dict[tuple, int] = {}
        self._heap: list[tuple[float, int, tuple]] = []

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, key: tuple) -> bool:
        return key in self._position

    def offer(self, member: Member) -> bool:
        """Add the member if it is new and beats the worst of a full population."""
        key = member.structure.key()
        if key in self._position:
            return False
        if len(self.members) >= self.capacity:
            worst_score, worst_seq, worst_key = self._heap[0]
            if member.score <= worst_score:
                return False
            heapq.heappop(self._heap)
            self._remove(worst_key)
        self._position[key] = len(self.members)
        self.members.append(member)
        heapq.heappush(self._heap, (member.score, member.seq, key))
        return True

    def _remove(self, key: tuple) -> None:
        position = self._position.pop(key)
        last = self.members.pop()
        if position < len(self.members):
            self.members[position] = last
            self._position[last.structure.key()] = position

    def worst_score(self) -> float:
        return self._heap[0][0]

    def best(self) -> Member:
        return max(self.members, key=lambda m: (m.score, -m.seq))

    def top(self, k: int) -> list[Member]:
        return sorted(self.members, key=lambda m: (-m.score, m.seq))[:k]

    def to_list(self) -> list[dict]:
        return [m.to_dict() for m in self.members]

    @classmethod
    def from_list(cls, capacity: int, items: list[dict]) -> "Population":
        population = cls(capacity)
        for item in items:
            member = Member.from_dict(item)
            population._position[member.structure.key()] = len(population.members)
            population.members.append(member)
            heapq.heappush(population._heap, (member.score, member.seq, member.structure.key()))
        return population
