"""Dense equivalence: executor == HF forward and HF generate (docs/design.md §3)."""

import pytest
import torch

from harness.models.backbones.base import collate
from harness.models.backbones.random import RANDOM_FAMILIES, ragged_samples
from harness.models.executor import Executor
from harness.models.verify import TOLERANCE, verify_dense

FAMILIES = list(RANDOM_FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_logits_and_greedy_match_hf(random_backbones, family):
    bb = random_backbones[family]
    rep = verify_dense(bb, ragged_samples(bb, 4), max_new_tokens=16)
    assert rep.max_abs_diff_batch1 <= TOLERANCE
    assert rep.max_abs_diff_batched <= TOLERANCE
    assert rep.greedy_equal_batch1 and rep.greedy_equal_batched
    assert len(set(rep.prompt_lengths)) == 4, "the batch must be ragged"
    assert rep.ok


@pytest.mark.parametrize(
    "family",
    ["llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl3", "internvl3.5"],
)
def test_visual_counts_differ_per_sample(random_backbones, family):
    bb = random_backbones[family]
    batch = bb.encode(collate(bb, ragged_samples(bb, 4)))
    assert len(set(batch.visual_counts())) > 1


def test_token_types_and_positions(random_backbones):
    bb = random_backbones["llava-1.5"]
    samples = ragged_samples(bb, 2)
    batch = bb.encode(collate(bb, samples))
    tt = batch.token_type
    # left padding: sample 0 is shorter and starts with padding; its positions start at 0
    first = int((tt[0] != 0).nonzero()[0])
    assert first > 0 and (tt[0, :first] == 0).all()
    assert int(batch.positions[0, 0, first]) == 0
    # order within a sample: system, then visual, then text
    seq = tt[0, first:].tolist()
    assert seq == sorted(seq)
    assert batch.visual_counts() == [36, 36]
    assert batch.next_position.tolist() == batch.lengths()


def test_qwen2vl_mrope_positions_are_3d(random_backbones):
    bb = random_backbones["qwen2-vl"]
    batch = bb.encode(ragged_samples(bb, 1)[0])
    pos = batch.positions[:, 0]
    vis = batch.token_type[0] == 2
    assert pos.shape[0] == 3
    assert not torch.equal(pos[1, vis], pos[2, vis]), "height and width ids differ on the image grid"
    assert int(batch.next_position[0]) == int(pos.max()) + 1


def test_executor_rejects_bad_mode(random_backbones):
    with pytest.raises(ValueError, match="unknown executor mode 'fast'"):
        Executor(random_backbones["llava-1.5"], "fast")


def test_generate_eos_bounded(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = bb.encode(ragged_samples(bb, 1)[0])
    ex = Executor(bb)
    free = ex.generate(batch, max_new_tokens=6)
    eos = int(free[0, 2])
    bounded = ex.generate(batch, max_new_tokens=6, eos_token_id=eos)
    first = int((free[0] == eos).nonzero()[0])
    assert bounded.shape[1] == first + 1
    assert torch.equal(bounded[0], free[0, : first + 1])
