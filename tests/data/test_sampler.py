"""Training order and per-sample augmentation randomness depend on (seed, epoch, index) only."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vtrain.data.sampler import RepeatedAugmentationSampler, SeededSamples, SeededShuffleSampler, sample_seed


class RandomDraws(Dataset):
    """Sample i is (i, a random number drawn from torch's CPU generator), like a random crop would draw."""

    def __init__(self, size: int = 24) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, torch.rand(()).item()


class EveryGeneratorDraws(RandomDraws):
    """Draws from torch, Python's `random` and NumPy's global generator, as timm's transforms do."""

    def __getitem__(self, index: int) -> tuple[int, float, float, float]:
        return index, torch.rand(()).item(), random.random(), float(np.random.rand())


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


def test_seeded_samples_seed_python_and_numpy_too_and_restore_them():
    random.seed(1)
    np.random.seed(1)
    expected = random.random(), np.random.rand()
    random.seed(1)
    np.random.seed(1)
    samples = SeededSamples(EveryGeneratorDraws())
    first = samples[(5, sample_seed(0, 0, 5))]
    assert (random.random(), np.random.rand()) == expected
    assert samples[(5, sample_seed(0, 0, 5))] == first
    assert samples[(5, sample_seed(0, 1, 5))][1:] != first[1:]


def _repeated_epoch(size: int, epoch: int, num_replicas: int = 1, rank: int = 0) -> list[tuple[int, int]]:
    sampler = RepeatedAugmentationSampler(RandomDraws(size), seed=3, num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(epoch)
    keys = list(sampler)
    assert len(keys) == len(sampler)
    return keys


def test_repeated_augmentation_repeats_each_image_three_times_with_its_own_seeds():
    keys = _repeated_epoch(600, epoch=0)
    # DeiT's epoch: the data set's 600 samples rounded down to a multiple of 256
    assert len(keys) == 512
    counts = Counter(index for index, _ in keys)
    # 512 = 3 x 170 + 2: 170 images three times, the next one twice
    assert sorted(Counter(counts.values()).items()) == [(2, 1), (3, 170)]
    assert [index for index, _ in keys[:6:3]] == [keys[0][0], keys[3][0]] and keys[0][0] == keys[2][0]
    assert len({seed for _, seed in keys}) == 512  # every copy augments differently
    assert _repeated_epoch(600, epoch=0) == keys and _repeated_epoch(600, epoch=1) != keys


def test_repeated_augmentation_spreads_the_copies_over_ranks_as_one_bigger_batch():
    single = _repeated_epoch(1100, epoch=2)
    ranks = [_repeated_epoch(1100, epoch=2, num_replicas=4, rank=r) for r in range(4)]
    assert len(single) == 1024 and all(len(keys) == 256 for keys in ranks)
    # the three copies of the first image go to ranks 0, 1 and 2, as DeiT's RASampler sends them
    assert [ranks[r][0] for r in range(3)] == single[:3]
    batch = 8
    for step in range(len(single) // (4 * batch)):
        together = [key for r in range(4) for key in ranks[r][step * batch : (step + 1) * batch]]
        assert sorted(together) == sorted(single[step * 4 * batch : (step + 1) * 4 * batch])


def test_repeated_augmentation_resumes_mid_epoch_from_its_state():
    sampler = RepeatedAugmentationSampler(RandomDraws(300), seed=0, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(50)]
    state = sampler.state_dict()
    rest = list(iterator)
    resumed = RepeatedAugmentationSampler(RandomDraws(300), seed=0, num_replicas=2, rank=1)
    resumed.set_epoch(4)
    resumed.load_state_dict(state)
    assert state == {"yielded": 50} and list(resumed) == rest and len(seen + rest) == 128
    assert len(list(resumed)) == 128  # the next pass over the epoch starts from its beginning


def test_repeated_augmentation_needs_an_epoch_of_at_least_256_samples():
    with pytest.raises(ValueError, match="200 samples rounded down to a multiple of 256"):
        RepeatedAugmentationSampler(RandomDraws(200))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        RepeatedAugmentationSampler(RandomDraws(300), repeats=0)


@pytest.mark.parametrize("num_replicas", [1, 2, 8])
def test_repeated_augmentation_takes_the_images_deits_rasampler_takes(num_replicas):
    # DeiT samplers.py:41-58 (at seed 0 the orders coincide: DeiT seeds the permutation with the epoch):
    # a permutation, each entry repeated 3 times, rank r's share every num_replicas-th from r, cut to
    # the epoch length
    size, epoch = 1000, 7
    order = torch.randperm(size, generator=torch.Generator().manual_seed(epoch))
    repeated = torch.repeat_interleave(order, 3).tolist()
    length = size // 256 * 256 // num_replicas
    for rank in range(num_replicas):
        sampler = RepeatedAugmentationSampler(RandomDraws(size), seed=0, num_replicas=num_replicas, rank=rank)
        sampler.set_epoch(epoch)
        assert [index for index, _ in sampler] == repeated[rank::num_replicas][:length]


def test_repeated_augmentation_draws_of_every_generator_do_not_depend_on_the_rank():
    # what the DDP-equivalence test needs of the data: rank r's i-th batches together hold the same
    # (image, torch / Python / NumPy draws) as one process's i-th batch of twice the size
    dataset = EveryGeneratorDraws(520)

    def batches(num_replicas: int, rank: int, batch_size: int) -> list[list[tuple]]:
        sampler = RepeatedAugmentationSampler(dataset, seed=1, num_replicas=num_replicas, rank=rank)
        loader = DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, drop_last=True)
        return [list(zip(*(t.tolist() for t in batch), strict=True)) for batch in loader]

    single = batches(1, 0, 16)
    ranks = [batches(2, r, 8) for r in range(2)]
    assert len(single) == 32
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0][step] + ranks[1][step])
    # the three copies of an image differ in every generator's draws
    first = [key for key in single[0] if key[0] == single[0][0][0]]
    assert len(first) == 3 and all(len({key[g] for key in first}) == 3 for g in (1, 2, 3))
