"""On-device augmentation: the crop, flip and Cutout of hand-made images, worked out by hand;
shapes; draws that depend on (seed, step) alone; the default per data set."""

import pytest
import torch

from sharpcli.config import Augment, resolve_augment
from sharpcli.errors import SharpError
from sharpcli.workload.augment import augment, check_kind, crop, cutout, draw, flip

IMAGE = torch.tensor([[1., 2., 3.],
                      [4., 5., 6.],
                      [7., 8., 9.]]).view(1, 1, 3, 3)


def test_flip_mirrors_left_right_where_asked():
    both = torch.cat([IMAGE, IMAGE + 10])
    out = flip(both, torch.tensor([True, False]))
    assert out[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    assert torch.equal(out[1], both[1])


def test_crop_is_a_window_of_the_zero_padded_image():
    # padded by 1: rows −1..3, columns −1..3; the window from padded row 0, column 2 is
    # image rows −1..1 and columns 1..3
    out = crop(IMAGE, torch.tensor([0]), torch.tensor([2]), pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    centre = crop(IMAGE, torch.tensor([1]), torch.tensor([1]), pad=1)
    assert torch.equal(centre, IMAGE)  # the offset of the unpadded image: itself
    corner = crop(IMAGE, torch.tensor([2]), torch.tensor([0]), pad=1)
    assert corner[0, 0].tolist() == [[0, 4, 5], [0, 7, 8], [0, 0, 0]]


def test_crop_of_a_batch_matches_one_image_at_a_time():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=gen)
    dy, dx = torch.randint(0, 9, (6,), generator=gen), torch.randint(0, 9, (6,), generator=gen)
    out = crop(x, dy, dx)  # pad 4
    for i in range(6):
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        assert torch.equal(out[i], padded[:, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])


def test_cutout_zeroes_the_part_of_the_square_inside_the_image():
    x = torch.ones(2, 2, 6, 6)
    out = cutout(x, torch.tensor([True, False]), torch.tensor([-2, 0]), torch.tensor([3, 0]), size=4)
    expected = torch.ones(6, 6)
    expected[0:2, 3:6] = 0  # rows −2..1 and columns 3..6 of a 4×4 square, clipped
    assert torch.equal(out[0, 0], expected) and torch.equal(out[0, 1], expected)
    assert torch.equal(out[1], x[1])  # not applied: untouched


@pytest.mark.parametrize("kind", ["none", "crop", "flip-crop", "flip-crop-cutout"])
def test_shapes_dtype_and_the_data_left_alone(kind):
    x = torch.randn(5, 3, 32, 32)
    before = x.clone()
    out = augment(x, kind, seed=0, step=7)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)  # the data set itself is never modified
    assert (out is x) == (kind == "none")


def test_the_kinds_compose_one_draw():
    """crop ⊂ flip-crop ⊂ flip-crop-cutout, from the same random numbers."""
    x = torch.randn(16, 3, 10, 10)
    d = draw(16, 10, 10, seed=3, step=5)
    cropped = crop(x, d.dy, d.dx)
    assert torch.equal(augment(x, "crop", seed=3, step=5), cropped)
    flipped = flip(cropped, d.flip)
    assert torch.equal(augment(x, "flip-crop", seed=3, step=5), flipped)
    assert torch.equal(augment(x, "flip-crop-cutout", seed=3, step=5),
                       cutout(flipped, d.cut, d.cut_y, d.cut_x))


def test_draws_depend_on_seed_and_step_only():
    x = torch.randn(32, 3, 32, 32)
    a = augment(x, "flip-crop-cutout", seed=1, step=10)
    assert torch.equal(a, augment(x.clone(), "flip-crop-cutout", seed=1, step=10))
    assert not torch.equal(a, augment(x, "flip-crop-cutout", seed=1, step=11))
    assert not torch.equal(a, augment(x, "flip-crop-cutout", seed=2, step=10))
    torch.manual_seed(123)  # the global generator plays no part, and is not consumed
    state = torch.get_rng_state()
    assert torch.equal(a, augment(x, "flip-crop-cutout", seed=1, step=10))
    assert torch.equal(state, torch.get_rng_state())


def test_draw_frequencies():
    d = draw(4000, 32, 32, seed=0, step=0)
    assert 0.46 < d.flip.float().mean() < 0.54 and 0.46 < d.cut.float().mean() < 0.54
    assert set(d.dy.tolist()) == set(range(9)) and set(d.dx.tolist()) == set(range(9))
    assert d.cut_y.min() == -8 and d.cut_y.max() == 23


def test_augmentation_needs_images():
    check_kind("flip-crop", (3, 32, 32))
    check_kind("none", (40,))
    with pytest.raises(SharpError, match=r"^augment=crop needs images .*\(40,\)"):
        check_kind("crop", (40,))


@pytest.mark.parametrize("dataset, batch, expected", [
    ("cifar10", 128, "flip-crop"), ("cifar100", 256, "flip-crop"), ("svhn", 128, "crop"),
    ("mnist1d", 100, "none"), ("digits", 100, "none"), ("mnist", 100, "none"),
    ("cifar10", None, "none"),  # full batch: GD studies one fixed function
])
def test_auto_resolves_per_data_set(dataset, batch, expected):
    assert resolve_augment("auto", dataset, batch) is Augment(expected)
    assert resolve_augment("flip-crop-cutout", dataset, batch) is Augment.flip_crop_cutout
