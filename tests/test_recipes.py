"""Recipes: each resolves to the flags its source documents; explicit flags win."""

import dataclasses

import pytest

from sharpcli.config import TrainConfig
from sharpcli.errors import SharpError
from sharpcli.recipes import RECIPES, apply_recipe, as_flags, get_recipe, recipe_config
from sharpcli.training.setup import validate_config


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_a_valid_config(name):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = RECIPES[name]
    assert set(recipe.flags) <= fields
    assert recipe.source and recipe.published and recipe.summary
    config = recipe_config(name)
    validate_config(config)
    assert config.recipe == name
    for key, value in recipe.flags.items():
        assert getattr(config, key) == value, key


def test_eigensam_recipe_is_the_official_log():
    c = recipe_config("eigensam-cifar100-resnet18")
    assert (c.dataset, c.model, c.loss, c.optimizer) == ("cifar100", "resnet18", "ce", "eigen-sam")
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.schedule) == (256, 0.1, 0.9, 5e-4, "cosine")
    assert (c.rho, c.alpha, c.eig_every, c.eig_iters, c.eig_mode) == (0.1, 0.2, 100, 5, "eval")
    assert (c.epochs, c.steps, c.train_size, c.test_size) == (200, None, None, None)
    assert c.augment == "flip-crop" and c.precision == "fp32" and c.label_smoothing == 0


def test_the_other_recipes():
    sam = recipe_config("sam-cifar10-wrn28-10")
    assert (sam.dataset, sam.model, sam.optimizer, sam.rho, sam.batch_size) == \
        ("cifar10", "wrn28-10", "sam", 0.05, 128)
    assert (sam.label_smoothing, sam.augment, sam.epochs) == (0.1, "flip-crop-cutout", 200)
    late = recipe_config("late-sam-cifar10-resnet18")
    assert (late.optimizer, late.sam_start, late.epochs) == ("sam", 175, 200)
    cohen = recipe_config("cohen-cifar5k-fc-tanh")
    assert (cohen.dataset, cohen.train_size, cohen.model, cohen.width, cohen.depth) == \
        ("cifar10", 5000, "mlp", 200, 2)
    assert (cohen.activation, cohen.loss, cohen.optimizer, cohen.batch_size) == ("tanh", "mse", "gd", None)
    assert (cohen.lr, cohen.steps, cohen.stop_acc, cohen.sharpness_every) == (0.01, 100_000, 0.99, 50)


def test_explicit_flags_win():
    c = recipe_config("eigensam-cifar100-resnet18", lr=0.05, seed=3, momentum=0.0)
    assert (c.lr, c.seed, c.momentum, c.rho) == (0.05, 3, 0.0, 0.1)


def test_steps_and_epochs_replace_each_other():
    assert "epochs" not in apply_recipe("eigensam-cifar100-resnet18", {"steps": 10})
    c = recipe_config("eigensam-cifar100-resnet18", steps=10)
    assert (c.steps, c.epochs) == (10, None)
    c = recipe_config("cohen-cifar5k-fc-tanh", epochs=1)
    assert (c.steps, c.epochs) == (None, 1)


def test_an_explicit_optimizer_drops_what_it_never_reads():
    sgd = recipe_config("late-sam-cifar10-resnet18", optimizer="sgd")
    validate_config(sgd)  # no "--sam-start needs --optimizer sam"
    assert sgd.sam_start is None and sgd.rho == TrainConfig.rho
    sam = recipe_config("eigensam-cifar100-resnet18", optimizer="sam")
    assert sam.rho == 0.1 and sam.alpha == TrainConfig.alpha and sam.eig_every == TrainConfig.eig_every


def test_unknown_recipe():
    with pytest.raises(SharpError, match="^unknown recipe 'imagenet'.*eigensam-cifar100-resnet18"):
        get_recipe("imagenet")


def test_flags_as_the_command_line_spells_them():
    assert as_flags({"train_size": None, "lr": 0.1, "nesterov": True, "augment": "flip-crop"}) == \
        "--train-size 0 --lr 0.1 --nesterov --augment flip-crop"
