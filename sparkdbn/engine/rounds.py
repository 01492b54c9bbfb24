"""The averaging epoch both trainers share: rounds, the strategy's filter, replica divergence.

An epoch is `averaging.rounds` averaging rounds. Each starts every partition from the
strategy's start point (with the averaged local momentum, or none when it is reset), trains
the partitions on their next slice of rows, and turns the row-weighted average into the new
global model (`kernels.averaging.block_update`). The partitions' generators continue from
round to round, so with one partition and plain settings the rounds are one uninterrupted
epoch. The partitions' `Local` arrays (PCD's chains) continue from round to round and from
epoch to epoch: a partition keeps its own, also through rounds in which it has nothing to
train. RBM pretraining (`rbm_trainer`) and fine-tuning (`finetune`) differ only in the step
they run and in what they record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sparkdbn.engine.averaging import Round, RoundResult
from sparkdbn.kernels.averaging import Averaging, block_start, block_update, replica_divergence

# A round's stage: from this start state, over this round's slice; the averaged result.
RunRound = Callable[[np.ndarray, Round], RoundResult]
# Raises before a bad round is kept (the divergence guard): new state, the round's result.
Guard = Callable[[np.ndarray, RoundResult], None]
# A final round that commits something of its own: start, round, and the check to call on
# its result before that commit.
LastRound = Callable[[np.ndarray, Round, Callable[[RoundResult], None]], None]
# Warn when the partitions' disagreement passes this multiple of what independent noise gives.
NOISE_MULTIPLE = 2.0

@dataclass
class EpochResult:
    """An epoch's rounds: the new state, the rows and sums over all rounds, and each round's
    replica divergence."""

    state: np.ndarray
    n_rows: int
    sums: np.ndarray | None
    divergence: list[float] = field(default_factory=list)

    @property
    def max_divergence(self) -> float:
        return max(self.divergence) if self.divergence else 0.0


class AveragingLoop:
    """The global state of one trainer under its averaging strategy, epoch by epoch.

    `state` is [parameters (`param_size` values), local momentum buffers]; `delta`, the block
    velocity over the parameters, is saved with the state (`saved_state`). `local` holds each
    partition's own array (`Local`) as the last epoch left it, which a checkpoint keeps too.
    """

    def __init__(self, state: np.ndarray, param_size: int) -> None:
        self.param_size = param_size
        self.state = np.ascontiguousarray(state, np.float32)
        self.delta = np.zeros(param_size, np.float32)
        self.local: dict[int, np.ndarray] = {}

    @property
    def saved_size(self) -> int:
        return self.state.size + self.param_size

    def saved_state(self) -> np.ndarray:
        """What a checkpoint keeps: the state, then the block velocity."""
        return np.concatenate([self.state, self.delta])

    def restore(self, saved: np.ndarray, local: dict[int, np.ndarray]) -> None:
        self.state = saved[: self.state.size].astype(np.float32)
        self.delta = saved[self.state.size :].astype(np.float32)
        self.local = dict(local)

    def epoch(
        self, averaging: Averaging, batch_size: int, run_round: RunRound, guard: Guard,
        last_round: LastRound | None = None, accept: Callable[[EpochResult], None] | None = None,
    ) -> EpochResult:
        """All rounds of one epoch. Each round must pass `guard`, the whole epoch `accept`,
        before the loop keeps the new state. `last_round`, if given, runs the final round and
        calls the `settle` it is given on the round's result before it commits anything of
        its own (a rough version), so that a bad round or epoch commits nothing."""
        so_far = EpochResult(self.state, 0, None)
        delta, generators, local = self.delta, {}, self.local
        for index in range(averaging.rounds):
            rnd = Round(index, averaging.rounds, batch_size, generators, local)
            last = index == averaging.rounds - 1
            runner = last_round if last and last_round is not None else None
            so_far, delta, generators, local = self._round(
                averaging, so_far, delta, rnd, run_round, runner, guard, accept if last else None
            )
        self.state, self.delta, self.local = so_far.state, delta, local
        return so_far

    def _round(
        self, averaging: Averaging, so_far: EpochResult, delta: np.ndarray, rnd: Round,
        run_round: RunRound, last_round: LastRound | None, guard: Guard,
        accept: Callable[[EpochResult], None] | None,
    ) -> tuple[EpochResult, np.ndarray, dict[int, str], dict[int, np.ndarray]]:
        """One round after `so_far`: the epoch so far with it, the block velocity, and the
        partitions' generators and local arrays."""
        p, state = self.param_size, so_far.state
        start = state.copy()
        start[:p] = block_start(state[:p], delta, averaging)
        if averaging.reset_local_momentum:
            start[p:] = 0
        settled: list[tuple[EpochResult, np.ndarray, dict[int, str], dict[int, np.ndarray]]] = []

        def settle(result: RoundResult) -> None:
            if result.n_rows == 0:  # no partition had a mini-batch left: nothing changes
                if accept is not None:
                    accept(so_far)
                settled.append((so_far, delta, rnd.generators, rnd.local))
                return
            new = np.empty_like(state)
            new[:p], new_delta = block_update(
                state[:p], delta, start[:p], result.state[:p], averaging
            )
            new[p:] = result.state[p:]
            guard(new, result)
            moved = result.state[:p].astype(np.float64) - start[:p]
            figure = replica_divergence(result.spread, result.n_rows, moved)
            sums = result.sums if so_far.sums is None else so_far.sums + result.sums
            done = EpochResult(
                new, so_far.n_rows + result.n_rows, sums, [*so_far.divergence, figure]
            )
            if accept is not None:
                accept(done)
            settled.append((done, new_delta, result.generators, {**rnd.local, **result.local}))

        if last_round is not None:
            last_round(start, rnd, settle)
        else:
            settle(run_round(start, rnd))
        (outcome,) = settled
        return outcome


def divergence_warning(figure: float, partitions: int) -> str | None:
    """The warning a round's replica divergence calls for, or None.

    If the partitions' changes were independent noise around a common direction, the
    divergence would be at most about √(P − 1), the value for pure noise; healthy rounds of
    small-batch SGD come close to it, and their average simply cancels the noise. Beyond it
    the changes cancel more than noise would: the partitions pull the model in opposing
    directions, and the average throws their work away. The warning comes at NOISE_MULTIPLE
    times that level, in the square.
    """
    if partitions < 2 or figure * figure <= NOISE_MULTIPLE * (partitions - 1):
        return None
    return (
        f"replica divergence {figure:.2f} over {partitions} partitions: their models pull in "
        "opposing directions between averages, so the average keeps little of their work; use "
        "more rounds_per_epoch, fewer partitions or a lower learning rate"
    )
