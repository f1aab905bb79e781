"""The data path (common/images/imagedata.py): whole-chunk reads, epoch order, device-side preparing.

Tolerances stated by the data path: evaluation preparing equals the plain reference
(float [0,1] → 3 channels → resize → normalize) within 1e-4; a training batch with no
crop, flip or jitter equals the evaluation input within 1e-4; crops are a function of
(seed, epoch, row) alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldpo.common.images import imagedata
from ldpo.common.files.stores import write_store


def gray(n=12, side=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


@pytest.fixture
def chunked(tmp_path):
    """A 50-image store (24 px) in chunks of 8 rows; image i is filled with the value i."""
    images = np.repeat(np.arange(50, dtype=np.uint8)[:, None, None], 24, axis=1).repeat(24, axis=2)
    path = tmp_path / "images.zarr"
    from ldpo.common.files.stores import create_store

    with create_store(path, n=50, arrays={"images": ((24, 24), "uint8")}, ids=[f"i{k}" for k in range(50)],
                      attrs={"stage": "test"}, chunk_rows=8) as store:
        store.write("images", 0, images)
    return path


def values(path, items, batch=1000, **kw):
    """Every (pixel value, row, target) the data path hands out for ``items``, in order."""
    got = list(imagedata.batches(str(path), items, batch, **kw))
    return (np.concatenate([x[:, 0, 0].numpy() for x, _, _ in got]).astype(int).tolist(),
            np.concatenate([r.numpy() for _, r, _ in got]).tolist(), np.concatenate([t.numpy() for _, _, t in got]).tolist())


def test_new_image_stores_are_chunked_in_blocks_of_images(tmp_path):
    path = tmp_path / "im.zarr"
    write_store(path, [f"i{k}" for k in range(300)], {"stage": "test"}, images=gray(300, 64))
    assert imagedata.chunk_rows(str(path)) == 256  # 1 MiB of 64 px images
    assert imagedata.read_rows(str(path), 300) == 4096  # 16 MiB reads of whole chunks
    assert imagedata.read_rows(str(path), 5000) == 5120  # at least one batch, whole chunks


def test_items_read_whole_chunks_and_return_the_rows_asked_for(chunked):
    assert imagedata.chunk_rows(str(chunked)) == 8
    items = imagedata.range_items(3, 45, 16)
    assert [it.ranges for it in items] == [[(3, 16)], [(16, 32)], [(32, 45)]]
    pixels, rows, _ = values(chunked, items)
    assert pixels == rows == list(range(3, 45))

    rows = np.array([41, 2, 17, 3, 40])
    items = imagedata.subset_items(rows, rows * 10, per_item=16, chunk=8)
    for it in items:
        assert all(lo % 8 == 0 for lo, _ in it.ranges)  # reads start at chunk starts
    pixels, got, targets = values(chunked, items)
    assert pixels == got == sorted(rows.tolist())  # store order
    assert targets == [v * 10 for v in sorted(rows.tolist())]


def test_one_window_is_exactly_the_epochs_shuffle():
    rows, targets = np.arange(5, 45), np.arange(40) % 4
    plan = imagedata.epoch_items(rows, targets, seed=3, epoch=2, chunk=8, row_bytes=576, batch=16)
    assert len(plan.items) == 1 and plan.batches == 2 and plan.images == 32
    order = imagedata.epoch_order(targets, 3, 2)
    assert plan.items[0].rows.tolist() == rows[order].tolist()
    assert plan.items[0].targets.tolist() == targets[order].tolist()
    other = imagedata.epoch_items(rows, targets, seed=3, epoch=3, chunk=8, row_bytes=576, batch=16)
    assert other.items[0].rows.tolist() != plan.items[0].rows.tolist()


def test_windows_read_each_chunk_once_and_processes_share_the_epoch(chunked):
    rows = np.array([r for r in range(50) if r % 7])  # a training subset
    targets = rows % 3
    plans = [imagedata.epoch_items(rows, targets, seed=1, epoch=0, chunk=8, row_bytes=576, batch=4,
                                   rank=r, world=2, window_bytes=2 * 8 * 576) for r in range(2)]
    assert plans[0].batches == plans[1].batches
    chunks_read, seen = [], []
    for plan in plans:
        for item in plan.items:
            assert sum(hi - lo for lo, hi in item.ranges) <= 16  # a window: 2 chunks
            chunks_read += [c for lo, hi in imagedata.item_reads(item, 8) for c in range(lo // 8, -(-hi // 8))]
        pixels, got_rows, got_targets = values(chunked, plan.items, batch=3, workers=2)
        assert pixels == got_rows  # the right pixels
        assert got_targets == [r % 3 for r in got_rows]
        assert got_rows == np.concatenate([item.rows for item in plan.items]).tolist()  # in the plan's order
        seen += got_rows
    assert sorted(chunks_read) == sorted(set(chunks_read))  # every chunk read once per epoch
    assert sorted(seen) == sorted(rows.tolist())  # every training image once, shared by the two


def test_batches_are_the_same_whatever_the_workers_and_stop_at_the_limit(chunked):
    rows = np.arange(50)
    plan = imagedata.epoch_items(rows, rows % 5, seed=4, epoch=1, chunk=8, row_bytes=576, batch=7,
                                 window_bytes=3 * 8 * 576)
    assert len(plan.items) >= 3  # several windows: batches cross window boundaries
    runs = {w: list(imagedata.batches(str(chunked), plan.items, 7, workers=w)) for w in (0, 1, 3)}
    for w, got in runs.items():
        assert [len(x) for x, _, _ in got] == [7] * 7 + [1], w
        for (x, r, t), (x0, r0, t0) in zip(got, runs[0]):
            assert torch.equal(x, x0) and torch.equal(r, r0) and torch.equal(t, t0)
    limited = list(imagedata.batches(str(chunked), plan.items, 7, workers=2, limit=plan.batches))
    assert len(limited) == plan.batches == 7
    assert all(torch.equal(a[0], b[0]) for a, b in zip(limited, runs[0]))


def test_reads_are_cut_at_whole_chunks_of_at_most_the_read_size():
    item = imagedata.Item([(0, 24), (40, 80)], np.arange(64))
    assert imagedata.item_reads(item, 16) == [(0, 16), (16, 24), (40, 48), (48, 64), (64, 80)]


def test_balanced_order_draws_classes_uniformly():
    targets = np.array([0] * 90 + [1] * 8 + [2] * 2)
    order = imagedata.epoch_order(targets, seed=1, epoch=0, balanced=True)
    counts = np.bincount(targets[order], minlength=3)
    assert counts.sum() == 100 and counts.min() >= 30
    plain = imagedata.epoch_order(targets, 1, 0)
    assert sorted(plain) == list(range(100)) and list(plain) != list(imagedata.epoch_order(targets, 1, 1))


@pytest.mark.parametrize("how", ["imagenet", "zscore"])
def test_preprocess_on_tensors_equals_the_plain_reference(how):
    block = gray(6, 40)
    rgb = np.stack([block, block[::-1], block.transpose(0, 2, 1)], axis=-1)
    for b in (block, rgb):
        plain = imagedata.normalize(imagedata.resize(imagedata.to_float3(b), 32), how)
        assert torch.allclose(imagedata.Preprocess(32, how)(torch.from_numpy(b)), plain, atol=1e-4)
    fast = imagedata.Preprocess(32, how, channels_last=True)(torch.from_numpy(block))
    assert fast.is_contiguous(memory_format=torch.channels_last)


def test_augment_without_crop_flip_or_jitter_is_the_evaluation_input():
    block = torch.from_numpy(gray(5, 32))
    augment = imagedata.Augment(32, "imagenet", min_scale=1.0)
    assert torch.allclose(augment(block, np.arange(5), 0), imagedata.Preprocess(32, "imagenet")(block), atol=1e-4)


def test_augment_draws_depend_on_seed_epoch_and_row_only():
    u = imagedata.draws(0, 1, np.array([7, 3, 9]), imagedata.DRAWS)
    again = imagedata.draws(0, 1, np.array([9, 7]), imagedata.DRAWS)
    assert np.array_equal(u[[2, 0]], again) and ((u >= 0) & (u < 1)).all()
    assert not np.allclose(u, imagedata.draws(0, 2, np.array([7, 3, 9]), imagedata.DRAWS))
    assert not np.allclose(u, imagedata.draws(1, 1, np.array([7, 3, 9]), imagedata.DRAWS))
    many = imagedata.draws(5, 0, np.arange(20000), 4)
    assert abs(many.mean() - 0.5) < 0.01 and abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03


def test_crops_follow_the_random_resized_crop_rule():
    u = imagedata.draws(2, 0, np.arange(4000), imagedata.DRAWS)
    boxes = imagedata.crop_boxes(u, 60, 80, 0.35)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    area = w * h / (60 * 80)
    assert area.min() > 0.3 and area.max() <= 1.0 and area.std() > 0.1
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    assert len(np.unique(boxes[:, 0])) > 10 and len(np.unique(boxes[:, 1])) > 10


def test_flips_mirror_about_half_the_images_and_jitter_changes_intensity():
    block = torch.from_numpy(gray(200, 16, seed=4))
    plain = imagedata.Augment(16, "imagenet", min_scale=1.0)(block, np.arange(200), 0)
    flipped = imagedata.Augment(16, "imagenet", min_scale=1.0, flip=True)(block, np.arange(200), 0)
    mirrored = torch.isclose(flipped, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(flipped, plain, atol=1e-5).flatten(1).all(1)
    assert bool((mirrored | same).all()) and 60 < int(mirrored.sum()) < 140
    jittered = imagedata.Augment(16, "imagenet", min_scale=1.0, jitter=0.5)(block, np.arange(200), 0)
    assert (jittered - plain).abs().flatten(1).max(1).values.min() > 1e-3
