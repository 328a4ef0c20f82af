"""utils/speed.py: the --channels_last default follows the device and the CPU's vector units."""

from __future__ import annotations

import pytest
import torch

from utils.speed import default_channels_last


@pytest.mark.parametrize(
    "cap, expected",
    [("AVX512", True), ("AVX512_BF16", True), ("AMX", True), ("AVX2", False), ("DEFAULT", False), ("ZVECTOR", False)],
)
def test_cpu_default_follows_the_capability(cap, expected):
    assert default_channels_last(torch.device("cpu"), cap) is expected


def test_cuda_default_is_on_and_the_machine_reads_its_own_capability():
    assert default_channels_last(torch.device("cuda")) is True
    here = torch.backends.cpu.get_cpu_capability()
    assert default_channels_last(torch.device("cpu")) is here.upper().startswith(("AVX512", "AMX"))
