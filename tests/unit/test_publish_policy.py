"""The publish policy (`engine.publishing.PublishPolicy`): after which epochs a layer publishes
a rough version, for given settings, written out by hand."""

from __future__ import annotations

import pytest

from sparkdbn.config import TrainConfig
from sparkdbn.engine.publishing import PublishPolicy


@pytest.mark.parametrize(
    ("epochs", "start_after", "every", "rough"),
    [
        (5, 1, 1, [1, 2, 3, 4]),  # every epoch but the last, which publishes the final version
        (10, 3, 3, [3, 6, 9]),
        (10, 2, 4, [2, 6]),
        (6, 2, 2, [2, 4]),  # epoch 6 is the last: the final version, not a rough one
        (4, 4, 1, []),  # nothing rough before the final version
        (3, 5, 1, []),  # start_after beyond the epochs
        (1, 1, 1, []),
    ],
)
def test_rough_versions_follow_start_after_and_publish_every(
    epochs: int, start_after: int, every: int, rough: list[int]
) -> None:
    policy = PublishPolicy(start_after, every, epochs, in_epoch=True)
    assert [done for done in range(epochs + 2) if policy.rough_after(done)] == rough


def test_policy_of_a_config() -> None:
    cfg = TrainConfig(
        layers=[4, 3, 2], epochs=7, start_after=2, publish_every=3, rough_versions="after_epoch"
    )
    assert PublishPolicy.of(cfg) == PublishPolicy(2, 3, 7, in_epoch=False)
    assert PublishPolicy.of(TrainConfig(layers=[4, 3, 2])).in_epoch  # the default: in_epoch
