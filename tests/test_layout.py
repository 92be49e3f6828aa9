"""The host side of the executor: token layouts and row sets decided without the device."""

import numpy as np
import pytest
import torch

from harness.models.layout import PAD, SYS, TXT, VIS, Layout, LayoutError, relative, rowset


def test_uniform_layout_gives_slices_and_shared_indices():
    tt = np.array([[SYS] * 3 + [VIS] * 4 + [TXT] * 2] * 2, dtype=np.int8)
    lay = Layout(tt)
    assert lay.uniform and lay.count(VIS) == [4, 4] and lay.visual_spans() == [(3, 7), (3, 7)]
    vis = rowset(tt == VIS, lay.pad_row())
    assert (vis.kind, vis.start, vis.stop) == ("slice", 3, 7)
    nonvis = rowset(tt != VIS, lay.pad_row()).materialize(torch.device("cpu"))
    assert nonvis.kind == "select" and nonvis.index.tolist() == [0, 1, 2, 7, 8]
    every = rowset(tt != PAD, lay.pad_row())
    assert every.kind == "all"
    x = torch.arange(2 * 9 * 2, dtype=torch.float32).view(2, 9, 2)
    assert torch.equal(nonvis.take(x), x[:, [0, 1, 2, 7, 8]])
    assert torch.equal(vis.take(x), x[:, 3:7]) and vis.take(x).data_ptr() == x[:, 3:].data_ptr()  # a view
    y = nonvis.add(x.clone(), torch.ones(2, 5, 2))
    assert torch.equal(y - x, torch.zeros_like(x).index_fill_(1, nonvis.index, 1.0))


def test_ragged_layout_pads_with_its_own_padding_row():
    tt = np.array([[PAD, SYS, VIS, VIS, TXT], [SYS, VIS, VIS, VIS, TXT]], dtype=np.int8)
    lay = Layout(tt)
    assert not lay.uniform and lay.last_rows().tolist() == [4, 4]
    short = np.array([[SYS, VIS, TXT, TXT], [SYS, VIS, VIS, TXT]], dtype=np.int8)
    with pytest.raises(LayoutError, match="padding row"):
        rowset(short == VIS, Layout(short).pad_row())  # the first sample has no padding row to point to
    lay = lay.with_scratch()
    vis = rowset(lay.ttype == VIS, lay.pad_row()).materialize(torch.device("cpu"))
    assert vis.kind == "gather" and vis.rows.tolist() == [[2, 3, 5], [1, 2, 3]]
    assert vis.valid.tolist() == [[True, True, False], [True, True, True]] and vis.counts() == [2, 3]
    x = torch.randn(2, 6, 3)
    assert torch.equal(vis.take(x)[1], x[1, 1:4]) and torch.equal(vis.take(x)[0, 2], x[0, 5])


def test_relative_row_sets_follow_duplicates_in_order():
    lay = Layout(np.array([[PAD, SYS, VIS, TXT], [SYS, VIS, VIS, TXT]], dtype=np.int8)).with_scratch()
    pad = lay.pad_row()
    work = rowset(lay.ttype != VIS, pad)  # system + text + padding of each sample
    same = relative(rowset(lay.ttype != VIS, pad), work)
    assert same.kind == "all"  # an equal set is the identity: no gather
    text = relative(rowset(lay.ttype == TXT, pad), work)
    assert text.rows.tolist() == [[2], [1]]
    with pytest.raises(LayoutError, match="not in the enclosing row set"):
        relative(rowset(lay.ttype == VIS, pad), work)


def test_non_contiguous_visual_tokens_are_one_line_errors():
    lay = Layout(np.array([[SYS, VIS, TXT, VIS, TXT]], dtype=np.int8))
    with pytest.raises(LayoutError, match="not contiguous") as err:
        lay.visual_spans()
    assert "\n" not in str(err.value)


def test_batches_carry_their_layout_to_every_device(random_backbones):
    from harness.models.backbones.random import ragged_samples

    bb = random_backbones["llava-1.5"]
    batch = bb.encode(ragged_samples(bb, 1)[0])
    assert np.array_equal(batch.layout.ttype, batch.token_type.numpy())
    moved = batch.to("cpu", torch.float64)
    assert moved.layout is batch.layout
    assert batch.select([0]).layout.key == batch.layout.key
