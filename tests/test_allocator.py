"""The allocator policy: it removes the page faults of repeated passes, and the CLI applies it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from finpercep import cli
from finpercep.allocator import configure_allocator
from finpercep.errors import ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# One process per policy (it cannot be undone): the median of the minor page faults of six reward passes of
# a full-depth model on a batch of eight 256x256 images, after four warm-up passes (with retain the heap
# reaches its working size within about five passes).
_FAULTS = """
import json, resource, sys
import torch
from finpercep.allocator import configure_allocator
from finpercep.rm import RewardModel, RMConfig
applied = configure_allocator(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
cfg = RMConfig(decoder_block="light", decoder_widths=(8, 16, 32, 64))
model = RewardModel(cfg).eval().requires_grad_(False)
x = torch.rand(8, 3, 256, 256)
def step():
    model(x.clone().requires_grad_(True)).score.sum().backward()
for _ in range(4):
    step()
per_pass = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    per_pass.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sorted(per_pass)[3]}))
"""


def _faults(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, policy], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the policy is set through glibc's mallopt")
def test_retain_removes_the_page_faults_of_repeated_passes() -> None:
    system, retain = _faults("system"), _faults("retain")
    assert (system["applied"], retain["applied"]) == (False, True)
    # measured here: 10,000-28,000 faults per pass under glibc's default policy, about 1 with retain
    assert system["faults"] > 2000
    assert retain["faults"] < system["faults"] / 20


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="allocator must be one of"):
        configure_allocator("jemalloc")


def test_system_policy_changes_nothing() -> None:
    assert configure_allocator("system") is False


@pytest.mark.parametrize(("argv", "expected"), [([], "retain"), (["--allocator", "system"], "system")])
def test_cli_applies_the_policy_before_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(cli, "configure_allocator", seen.append)
    assert cli.main([*argv, "data", "photos"]) == 0
    assert seen == [expected]
    assert "astronaut" in capsys.readouterr().out
