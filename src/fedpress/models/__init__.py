"""Models for the experiments fedpress reproduces, built deterministically from a generator.

Use `build_model(name, input_shape, num_classes, generator)` with a name from
`list_models()`; the classes are exported too for direct use and type checks. Every model
is built on the meta device and initialised from an explicit `torch.Generator`
(`init_parameters`), so torch's global random state is never touched.
"""

from fedpress.models._init import INIT_SCHEMES, init_parameters
from fedpress.models._norm import NORMS
from fedpress.models.cnn import CNN, FlareCNN, LeNet5, SimpleConvNet
from fedpress.models.mlp import FLARE_FC_WIDTH, MLP, FlareFC, LogReg
from fedpress.models.registry import build_model, list_models, model_options, num_parameters
from fedpress.models.resnet import BasicBlock, ResNet18
from fedpress.models.vgg import VGG, VGG_CONFIGS

__all__ = [
    "CNN",
    "FLARE_FC_WIDTH",
    "INIT_SCHEMES",
    "MLP",
    "NORMS",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "FlareCNN",
    "FlareFC",
    "LeNet5",
    "LogReg",
    "ResNet18",
    "SimpleConvNet",
    "build_model",
    "init_parameters",
    "list_models",
    "model_options",
    "num_parameters",
]
