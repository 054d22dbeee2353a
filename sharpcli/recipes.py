"""Recipes: the flags of published settings, by name (`sharp train --recipe NAME`).

A recipe is data: TrainConfig field names and values, a source and the number a run is
compared with. `apply_recipe` fills every flag the user did not give from the recipe; the
flags given explicitly win. Two flags never come from a recipe against the user's choice:
an explicit --steps drops the recipe's --epochs (and the reverse), and an explicit
--optimizer drops the recipe's settings that optimizer never reads (UNUSED_BY_OPTIMIZER:
`--recipe late-sam-cifar10-resnet18 --optimizer sgd` is plain SGD, without --sam-start).
config.json records the result and the recipe's name. No torch here: `sharp --help` and
`sharp train --list-recipes` stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sharpcli.config import UNUSED_BY_OPTIMIZER, TrainConfig, plain
from sharpcli.errors import SharpError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    flags: dict       # TrainConfig field -> value
    source: str       # where the settings come from
    published: str    # what a run of it is compared with


# Measurement on the CIFAR recipes, the same for every optimizer so runs compare: λ₁ on the
# first 1024 training examples (un-augmented, fp32) every ~5 epochs, evaluation every epoch,
# a checkpoint every 10 epochs (the last 3 kept: a ResNet-18 checkpoint with its momentum
# is 90 MB). Chunks of 256 bound the memory of Hessian-vector products on a 24 GB GPU.
def _cifar_measurement(steps_per_epoch: int, chunk: int) -> dict:
    return dict(sharpness_every=5 * steps_per_epoch, sharpness_samples=1024,
                eval_every=steps_per_epoch, checkpoint_every=10 * steps_per_epoch,
                keep_last=3, physical_batch_size=chunk)


_FULL_CIFAR = dict(train_size=None, test_size=None)
_SGD_CIFAR = dict(momentum=0.9, weight_decay=5e-4, lr=0.1, schedule="cosine", epochs=200, loss="ce")

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        "eigensam-cifar100-resnet18",
        "Eigen-SAM, ResNet-18 on CIFAR-100, 200 epochs",
        dict(dataset="cifar100", **_FULL_CIFAR, model="resnet18", **_SGD_CIFAR, batch_size=256,
             optimizer="eigen-sam", rho=0.1, alpha=0.2, eig_every=100, eig_iters=5,
             eig_mode="eval", augment="flip-crop", **_cifar_measurement(196, 256)),
        "Luo et al., Explicit Eigenvalue Regularization Improves Sharpness-Aware Minimization "
        "(NeurIPS 2024), the official code's training log and README example (train.py --sam "
        "Eigen-SAM --freq 100 --epochs 200 --alpha 0.2 --batch_size 256 --dataset CIFAR100 "
        "--rho 0.1): lr 0.1, momentum 0.9, weight decay 5e-4, cosine, v by 5 power steps in "
        "eval mode, random crop and flip. Its code counts --freq in steps within each epoch "
        "(a refresh at step 100 of every 196-step epoch); sharpcli counts steps of the run "
        "(steps 0, 100, 200, ...)",
        "test accuracy 78.51% for Eigen-SAM against 78.07% for SAM (the official log)"),
    Recipe(
        "sam-cifar10-wrn28-10",
        "SAM, WRN-28-10 on CIFAR-10, 200 epochs, label smoothing and Cutout",
        dict(dataset="cifar10", **_FULL_CIFAR, model="wrn28-10", **_SGD_CIFAR, batch_size=128,
             optimizer="sam", rho=0.05, label_smoothing=0.1, augment="flip-crop-cutout",
             **_cifar_measurement(391, 128)),
        "Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization "
        "(ICLR 2021), CIFAR-10 WRN-28-10, with the training settings of davda54/sam's "
        "README and example/train.py: batch 128, lr 0.1, momentum 0.9, weight decay 5e-4, "
        "200 epochs, label smoothing 0.1, crop, flip and Cutout (16x16, p = 0.5), rho 0.05; "
        "cosine in place of its step decay (x0.2 at 30, 60 and 80% of training)",
        "davda54/sam README (WRN-16-8, same settings): test error 2.86% for SAM against "
        "3.20% for SGD; Foret et al. Table 1 reports WRN-28-10"),
    Recipe(
        "late-sam-cifar10-resnet18",
        "late-phase SAM: SGD for 175 epochs, then SAM to 200; ResNet-18 on CIFAR-10",
        dict(dataset="cifar10", **_FULL_CIFAR, model="resnet18", **_SGD_CIFAR, batch_size=128,
             optimizer="sam", rho=0.05, sam_start=175, augment="flip-crop",
             **_cifar_measurement(391, 128)),
        "Zhou et al., Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late "
        "in Training (ICLR 2025): the switch from SGD to SAM at epoch t = 175 of T = 200 "
        "(their Fig. 1), on the standard CIFAR-10 ResNet-18 settings (batch 128, lr 0.1, "
        "momentum 0.9, weight decay 5e-4, cosine, rho 0.05, crop and flip)",
        "Zhou et al. Fig. 1: SAM for the last 25 epochs reaches the test error and the "
        "flatness of SAM from the start, both better than SGD's"),
    Recipe(
        "cohen-cifar5k-fc-tanh",
        "full-batch GD at the edge of stability: fc-tanh on 5000 CIFAR-10 images, MSE",
        dict(dataset="cifar10", train_size=5000, test_size=None, model="mlp", width=200, depth=2,
             activation="tanh", loss="mse", optimizer="gd", lr=0.01, steps=100_000,
             stop_acc=0.99, augment="none", sharpness_every=50, eval_every=50,
             checkpoint_every=5000, keep_last=3),
        "Cohen et al., Gradient Descent on Neural Networks Typically Occurs at the Edge of "
        "Stability (ICLR 2021); locuslab/edge-of-stability README: gd.py cifar10-5k fc-tanh "
        "mse 0.01 100000 --acc_goal 0.99 --eig_freq 50; fc-tanh is two hidden layers of 200 "
        "tanh units (src/archs.py); lambda_1 on all 5000 examples",
        "lambda_1 rises to 2/eta = 200 and hovers just above it while the loss keeps falling "
        "(Cohen et al. Fig. 1); sharp eos: at-edge"),
]}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise SharpError(f"unknown {{recipe}} {name!r}; expected one of {', '.join(RECIPES)} "
                         "(sharp train --list-recipes shows them)", param="recipe") from None


def apply_recipe(name: str, explicit: dict) -> dict:
    """The TrainConfig fields of recipe `name` with the `explicit` ones (the flags the user
    gave) on top, and `recipe` = name. See the module docstring for the two exceptions."""
    flags = dict(get_recipe(name).flags)
    if "steps" in explicit:
        flags.pop("epochs", None)
    if "epochs" in explicit:
        flags.pop("steps", None)
    optimizer = plain(explicit.get("optimizer", flags.get("optimizer")))
    for key in UNUSED_BY_OPTIMIZER.get(optimizer, ()):
        flags.pop(key, None)
    return {**flags, **explicit, "recipe": name}


def recipe_config(name: str, **explicit) -> TrainConfig:
    """A TrainConfig of recipe `name`, `explicit` fields overriding: the library's --recipe."""
    return TrainConfig(**apply_recipe(name, explicit))


def train_config(settings: dict, given: Iterable[str] | None = None) -> TrainConfig:
    """The TrainConfig `sharp train` runs, from TrainConfig fields: `settings` holds values
    for any of them (the command passes every flag, defaults included) and `given` names the
    ones set explicitly (None: all of `settings`). With `settings["recipe"]`, the recipe
    fills every field not given, by `apply_recipe`'s rule; without one, `settings` is the
    config. Sizes of 0 mean the whole split (TrainConfig's own rule)."""
    name = settings.get("recipe")
    if name is None:
        return TrainConfig(**settings)
    given = set(settings) if given is None else set(given)
    explicit = {key: value for key, value in settings.items() if key in given}
    return TrainConfig(**{**settings, **apply_recipe(name, explicit)})


def as_flags(flags: dict) -> str:
    """A recipe's fields as `sharp train` flags (None sizes as 0: the whole split)."""
    parts = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {0 if value is None else plain(value)}")
    return " ".join(parts)


def describe(recipe: Recipe) -> str:
    """The lines `sharp train --list-recipes` prints for a recipe."""
    return "\n".join([recipe.name, f"  {recipe.summary}", f"  flags:     {as_flags(recipe.flags)}",
                      f"  source:    {recipe.source}", f"  published: {recipe.published}"])
