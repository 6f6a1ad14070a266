"""Which priority lane takes the next turn: one policy for admission from Kafka and for the GPU queue.

Strict priority, with a share: each turn taken while lanes below the most urgent waiting lane also
wait earns that lane `share` of a turn's credit, and a whole credit hands the turn down to the lanes
below it, which apply the same rule among themselves. With lanes 0, 1 and 2 all waiting and a share
of 0.25, lane 0 takes 3/4 of the turns, lane 1 3/16 and lane 2 1/16: every lane moves, none starves,
however many lanes there are and whichever of them are empty.

Credit is kept per lane, so a lane that goes idle keeps what its lower lanes earned for next time,
and a share of 0 is plain strict priority.
"""

from __future__ import annotations

from collections.abc import Iterable


class LaneShare:
    def __init__(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a lane share is between 0 and 1, not {share}")
        self._share = share
        self._credit: dict[int, float] = {}

    @property
    def share(self) -> float:
        return self._share

    def due(self, waiting: Iterable[int]) -> int | None:
        """The lane whose turn it is among the lanes with work, without taking the turn."""
        return self._choose(waiting, take=False)

    def take_turn(self, waiting: Iterable[int]) -> int:
        """Give the turn to the lane whose turn it is, and account for it."""
        lane = self._choose(waiting, take=True)
        if lane is None:
            raise ValueError("no lane has work: there is no turn to take")
        return lane

    def _choose(self, waiting: Iterable[int], *, take: bool) -> int | None:
        lanes = sorted(set(waiting))
        for lane in lanes[:-1]:  # a lane with nothing waiting below it earns nothing
            credit = self._credit.get(lane, 0.0) + self._share
            handed_down = credit >= 1.0 - 1e-9  # ten shares of 0.1 make a whole turn, not 0.999...
            if take:
                self._credit[lane] = credit - 1.0 if handed_down else credit
            if not handed_down:
                return lane
        return lanes[-1] if lanes else None
