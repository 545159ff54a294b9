"""Training order and per-sample augmentation randomness depend on (seed, epoch, index) only."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vtrain.data.sampler import SeededSamples, SeededShuffleSampler, sample_seed


class RandomDraws(Dataset):
    """Sample i is (i, a random number drawn from torch's CPU generator), like a random crop would draw."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, torch.rand(()).item()


def _epoch(seed: int, epoch: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> list[list]:
    dataset = RandomDraws()
    sampler = SeededShuffleSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(epoch)
    loader = DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, drop_last=True)
    return [list(zip(*(t.tolist() for t in batch), strict=True)) for batch in loader]


def test_same_seed_and_epoch_give_the_same_batches_and_draws():
    assert _epoch(3, 0, 4) == _epoch(3, 0, 4)
    assert _epoch(3, 0, 4) != _epoch(3, 1, 4) != _epoch(4, 0, 4)
    indices = [i for batch in _epoch(3, 0, 4) for i, _ in batch]
    assert sorted(indices) == list(range(24))


def test_a_samples_draw_does_not_depend_on_its_batch_or_rank():
    single = _epoch(7, 2, batch_size=8)
    ranks = [_epoch(7, 2, batch_size=4, num_replicas=2, rank=r) for r in range(2)]
    for step, batch in enumerate(single):
        # rank r's step-th batch of 4: together the two are the single process's step-th batch of 8
        assert sorted(batch) == sorted(ranks[0][step] + ranks[1][step])


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SeededSamples(RandomDraws())[(5, sample_seed(0, 0, 5))]
    assert torch.equal(torch.rand(3), expected)


def test_a_wrapped_subset_draws_as_its_samples_do():
    # a Subset has `__getitems__`, which the DataLoader prefers; through the wrapper it must not be found
    subset = Subset(RandomDraws(), range(0, 24, 2))
    sampler = SeededShuffleSampler(subset, seed=3)
    batches = list(DataLoader(SeededSamples(subset), batch_size=4, sampler=sampler))
    expected = [SeededSamples(subset)[key] for key in sampler]
    assert [pair for batch in batches for pair in zip(*(t.tolist() for t in batch), strict=True)] == [
        (index, pytest.approx(draw)) for index, draw in expected
    ]


def test_sample_seeds_differ_between_neighbours_and_fit_in_63_bits():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(100)}
    assert len(seeds) == 900 and all(0 <= x < 2**63 for x in seeds)
