"""VGG19 / VGGFace feature extractors for the content loss, and their Caffe weight converter.

See :mod:`vgg_model.vgg` for the networks and weights-file format,
:mod:`vgg_model.caffe` for the ``.caffemodel`` reader and
:mod:`vgg_model.convert_model` for the command-line converter.
"""

from vgg_model.caffe import CaffeFormatError, CaffeLayer, CaffeNet, read_caffemodel
from vgg_model.vgg import (
    CAFFE_VGG19_PREPROCESS,
    CAFFE_VGGFACE_PREPROCESS,
    TORCHVISION_IMAGENET_PREPROCESS,
    VGGFeatures,
    VGGWeightsError,
    conv_shapes,
    layer_names,
    load_vgg,
    save_weights,
)

__all__ = [
    "CAFFE_VGG19_PREPROCESS",
    "CAFFE_VGGFACE_PREPROCESS",
    "TORCHVISION_IMAGENET_PREPROCESS",
    "CaffeFormatError",
    "CaffeLayer",
    "CaffeNet",
    "VGGFeatures",
    "VGGWeightsError",
    "conv_shapes",
    "layer_names",
    "load_vgg",
    "read_caffemodel",
    "save_weights",
]
