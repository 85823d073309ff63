"""Build a model by short name, the way configs name them (``model = "resnet18"``).

`build_model(name, input_shape, num_classes, generator, **kwargs)` sizes the model from the
dataset's sample shape and class count, so a config only names the architecture and its own
options. Options are checked here: an unknown name or option raises ValueError naming it and
the allowed values (DESIGN rule 6).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedpress.models._init import default_generator
from fedpress.models._shapes import check_positive, flat_size, image_shape
from fedpress.models.cnn import CNN, FlareCNN, LeNet5, SimpleConvNet
from fedpress.models.mlp import MLP, FlareFC, LogReg
from fedpress.models.resnet import ResNet18
from fedpress.models.vgg import VGG

Shape = tuple[int, ...]


# Each builder takes (input_shape, num_classes, generator) positionally and the model's own
# options as keywords; those keyword names are what build_model accepts.


def _mlp(shape: Shape, num_classes: int, generator, *, widths=(200, 200), init="torch"):
    if isinstance(widths, int | str) or not isinstance(widths, Sequence):
        raise ValueError(f"mlp: widths must be a list of ints, got {widths!r}")
    return MLP(flat_size(shape, "mlp"), list(widths), num_classes, generator=generator, init=init)


def _logreg(shape: Shape, num_classes: int, generator, *, bias=True, init="torch"):
    return LogReg(
        flat_size(shape, "logreg"), num_classes, bias=bias, generator=generator, init=init
    )


def _flare_fc(shape: Shape, num_classes: int, generator, *, compat=False, init="torch"):
    in_features = flat_size(shape, "flare_fc")
    return FlareFC(in_features, num_classes, compat=compat, generator=generator, init=init)


def _cnn(shape: Shape, num_classes: int, generator, *, init="torch"):
    c, h, w = image_shape(shape, "cnn")
    return CNN(c, num_classes, (h, w), generator=generator, init=init)


def _flare_cnn(shape: Shape, num_classes: int, generator, *, compat=False, init="torch"):
    c, h, w = image_shape(shape, "flare_cnn")
    return FlareCNN(c, num_classes, (h, w), compat=compat, generator=generator, init=init)


def _lenet5(shape: Shape, num_classes: int, generator, *, padding=None, init="torch"):
    c, h, w = image_shape(shape, "lenet5")
    return LeNet5(c, num_classes, (h, w), padding=padding, generator=generator, init=init)


def _simple_convnet(shape: Shape, num_classes: int, generator, *, dropout=0.0, init="torch"):
    c, h, w = image_shape(shape, "simple_convnet")
    return SimpleConvNet(c, num_classes, (h, w), dropout=dropout, generator=generator, init=init)


def _vgg(depth: int) -> Callable[..., nn.Module]:
    def build(
        shape: Shape,
        num_classes: int,
        generator,
        *,
        norm="bn",
        gn_groups=32,
        classifier="linear",
        dropout=0.0,
        init="torch",
    ):
        c, h, w = image_shape(shape, f"vgg{depth}")
        return VGG(
            depth,
            c,
            num_classes,
            (h, w),
            norm=norm,
            gn_groups=gn_groups,
            classifier=classifier,
            dropout=dropout,
            generator=generator,
            init=init,
        )

    return build


def _resnet18(shape: Shape, num_classes: int, generator, *, norm="bn", gn_groups=32, init="torch"):
    c, _, _ = image_shape(shape, "resnet18")
    return ResNet18(c, num_classes, norm=norm, gn_groups=gn_groups, generator=generator, init=init)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "lenet5": _lenet5,
    "vgg11": _vgg(11),
    "vgg16": _vgg(16),
    "vgg19": _vgg(19),
    "resnet18": _resnet18,
    "simple_convnet": _simple_convnet,
    "flare_cnn": _flare_cnn,
    "flare_fc": _flare_fc,
    "logreg": _logreg,
}


def list_models() -> list[str]:
    """The names `build_model` accepts, sorted."""
    return sorted(_BUILDERS)


def model_options(name: str) -> dict[str, object]:
    """The keyword options of model `name` with their defaults."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    return _BUILDERS[name]


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    generator: torch.Generator | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build model `name` for samples of `input_shape` (without the batch dim) and `num_classes`.

    Every parameter is drawn from `generator` (torch's default initialisation, or the scheme
    named by ``init=``), so the same generator seed always gives the same model; torch's
    global random state is never touched. With no generator, seed 0 is used
    (``fedpress.rng.derive(0, "init")``); a run should pass ``derive(seed, "init")``.
    The model is on the CPU in training mode.
    """
    builder = _builder(name)
    allowed = model_options(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r}: unknown option {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    check_positive(num_classes, "num_classes", name)
    if generator is None:
        generator = default_generator()
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"build_model: generator must be a torch.Generator, got {generator!r}")
    return builder(tuple(input_shape), num_classes, generator, **kwargs)


def num_parameters(model: nn.Module) -> int:
    """d: the number of trainable scalars (length of the flat update vector)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
