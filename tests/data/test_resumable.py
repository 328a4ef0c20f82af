"""data/resumable.py and utils/records.py: order and augmentation from (seed, epoch, position);
records rewound to a checkpoint's size."""

import torch
from torch.utils.data import DataLoader, Dataset

from data.resumable import EpochBatchSampler, SeededSamples
from utils.records import RecordFile


class Noisy(Dataset):
    """Item i = (i, a draw from the global torch RNG), like a random augmentation."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item()])


def batches(sampler, workers):
    # generator: the loader's worker base seed is drawn from it, not from the global stream.
    loader = DataLoader(SeededSamples(Noisy()), batch_sampler=sampler, num_workers=workers, generator=torch.Generator())
    return [b for b in loader]


def test_sampler_order_per_epoch_and_skipping():
    s = EpochBatchSampler(10, 3, seed=7)
    assert s.steps_per_epoch == 3  # incomplete last batch dropped
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and all(len(b) == 3 for b in e0)
    assert len({i for b in e0 for i, _ in b}) == 9  # no repeats within an epoch
    s.set_epoch(0, start_step=2)
    assert list(s) == e0[2:] and len(s) == 1
    assert list(EpochBatchSampler(10, 3, seed=7).__iter__()) == e0  # a new process draws the same plan


def test_augmentation_independent_of_workers_and_of_skipping():
    s = EpochBatchSampler(10, 2, seed=1)
    s.set_epoch(4)
    full = batches(s, 0)
    assert torch.equal(torch.cat(full), torch.cat(batches(s, 2)))  # same draws in worker processes
    s.set_epoch(4, start_step=3)
    assert torch.equal(torch.cat(full[3:]), torch.cat(batches(s, 0)))  # resuming mid-epoch: same draws
    before = torch.get_rng_state()
    batches(s, 0)
    assert torch.equal(before, torch.get_rng_state())  # the main process's stream is untouched


def test_record_rewind_cuts_lines_after_checkpoint_and_torn_line(tmp_path):
    rec = RecordFile(tmp_path / "r.txt")
    rec.write_line("step 1")
    rec.write_line("step 2")
    size = rec.sync()
    rec.write_line("step 3")
    rec.close()
    with (tmp_path / "r.txt").open("a") as f:
        f.write("step 4 (torn")
    again = RecordFile(tmp_path / "r.txt")
    again.rewind(size)
    again.write_line("step 3")
    again.close()
    assert (tmp_path / "r.txt").read_text() == "step 1\nstep 2\nstep 3\n"
    RecordFile(tmp_path / "r.txt").rewind(10_000)  # shorter than at the checkpoint: left as it is
    assert (tmp_path / "r.txt").read_text() == "step 1\nstep 2\nstep 3\n"
