import pytest
import torch

from sharpcli.config import Model
from sharpcli.errors import SharpError
from sharpcli.workload.models import ACTIVATIONS, MODELS, build_model

FLAT, DIGITS, CIFAR = (40,), (1, 8, 8), (3, 32, 32)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,shape", [
    ("mlp", FLAT), ("mlp", DIGITS), ("mlp", CIFAR), ("cnn", FLAT), ("cnn", (2, 40)),
    ("cnn", DIGITS), ("cnn", CIFAR), ("resnet18", DIGITS), ("resnet18", CIFAR),
    ("resnet50", DIGITS), ("wrn28-10", DIGITS),
])
def test_output_shape(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_default_sizes_and_parameter_counts():
    # Small models at their defaults: tens of thousands of parameters at most.
    assert n_params(build_model("mlp", FLAT, 10)) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert n_params(build_model("cnn", FLAT, 10)) == 6442  # 40 -> 20 -> 10 positions of 32 channels
    assert n_params(build_model("cnn", CIFAR, 10)) == 30634
    # The CIFAR models, against the counts the literature reports for 10 classes; on the
    # meta device their 71M parameters have shapes but no storage, so building them is instant.
    with torch.device("meta"):
        assert n_params(build_model("resnet18", CIFAR, 10, activation="relu")) == 11_173_962
        assert n_params(build_model("resnet50", CIFAR, 10, activation="relu")) == 23_520_842
        assert n_params(build_model("wrn28-10", CIFAR, 10, activation="relu")) == 36_479_194


def test_width_and_depth_are_honoured():
    mlp = build_model("mlp", FLAT, 10, width=7, depth=4)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [7, 7, 7, 7, 10]
    cnn = build_model("cnn", DIGITS, 10, width=5, depth=5)  # pooling stops at 1x1
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(c.out_channels == 5 for c in convs)
    assert cnn(torch.randn(3, *DIGITS)).shape == (3, 10)
    resnet = build_model("resnet18", DIGITS, 10, width=8)
    assert resnet.head.in_features == 64
    wrn = build_model("wrn28-10", DIGITS, 10, width=2)
    assert wrn.head.in_features == 2 * 10 * 4
    assert build_model(Model.wrn28_10, DIGITS, 10, width=1)(torch.randn(2, *DIGITS)).shape == (2, 10)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_is_used(activation):
    model = build_model("mlp", FLAT, 3, width=4, depth=1, activation=activation)
    assert isinstance(model.act1, ACTIVATIONS[activation])
    resnet = build_model("resnet18", DIGITS, 3, width=2, activation=activation)
    assert any(isinstance(m, ACTIVATIONS[activation]) for m in resnet.stem)


def test_no_inplace_modules():
    for name in MODELS:
        shape = FLAT if name in ("mlp", "cnn") else DIGITS
        for activation in ACTIVATIONS:
            model = build_model(name, shape, 10, width=2, activation=activation)
            assert not any(getattr(m, "inplace", False) for m in model.modules()), (name, activation)


@pytest.mark.parametrize("name,shape,width,activation", [
    ("mlp", FLAT, 6, "tanh"), ("mlp", DIGITS, 6, "gelu"), ("cnn", FLAT, 3, "tanh"),
    ("cnn", DIGITS, 3, "softplus"), ("resnet18", DIGITS, 2, "tanh"),
    ("resnet50", DIGITS, 1, "silu"), ("wrn28-10", DIGITS, 1, "softplus"),
])
def test_hessian_vector_product_matches_finite_differences(name, shape, width, activation):
    """Double backward through the model (as sharpcli.hessian does it) equals the central
    difference of gradients along v, in float64."""
    torch.manual_seed(0)
    model = build_model(name, shape, 3, width=width, activation=activation).double()
    x, y = torch.randn(4, *shape, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    params = list(model.parameters())

    def grad(create_graph=False):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    v = [torch.randn_like(p) for p in params]
    hv = torch.autograd.grad(grad(create_graph=True), params, grad_outputs=v)

    # BatchNorm in train mode on 4 examples has large third derivatives: a small step keeps
    # the O(eps²) error of the central difference well below the tolerance.
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    g_plus = grad()
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    g_minus = grad()
    fd = [(a - b) / (2 * eps) for a, b in zip(g_plus, g_minus)]
    hv_flat = torch.cat([h.flatten() for h in hv])
    fd_flat = torch.cat([f.flatten() for f in fd])
    assert (hv_flat - fd_flat).norm() <= 1e-4 * fd_flat.norm()


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="vgg16"), "unknown model 'vgg16'"),
    (dict(activation="swish"), "unknown activation 'swish'"),
    (dict(width=0), "^width must be positive, got 0"),
    (dict(width=-3), "^width must be positive, got -3"),
    (dict(depth=0), "^depth must be positive, got 0"),
    (dict(num_classes=0), "number of classes must be positive, got 0"),
    (dict(name="resnet18", input_shape=FLAT), r"resnet18 needs an image data set .*cifar10 or digits"),
    (dict(name="wrn28-10", input_shape=FLAT), "needs an image data set"),
    (dict(name="resnet50", input_shape=DIGITS, depth=5), "fixed depth"),
    (dict(name="cnn", input_shape=(1, 2, 3, 4)), "cnn takes inputs"),
])
def test_errors_name_the_bad_value(kwargs, match):
    args = dict(name="mlp", input_shape=FLAT, num_classes=10)
    args.update(kwargs)
    with pytest.raises(SharpError, match=match):
        build_model(args.pop("name"), args.pop("input_shape"), args.pop("num_classes"), **args)
