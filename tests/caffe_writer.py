"""Test helper: write small Caffe ``.caffemodel`` files and matching deploy prototxts.

A minimal protobuf wire-format *encoder* for the Caffe messages read by
``vgg_model.caffe`` (field numbers from Caffe's ``caffe.proto``), in either
layer format:

* ``"layer"``: ``NetParameter.layer`` (field 100) of ``LayerParameter``, blob
  sizes in ``BlobProto.shape``;
* ``"v1"``: legacy ``NetParameter.layers`` (field 2) of ``V1LayerParameter``
  with legacy ``num/channels/height/width`` blob sizes, as in the 2014 VGG files.

``packed=False`` writes repeated floats and dims unpacked, one tag per value,
as old protobuf versions did.
"""

import numpy as np

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values from caffe.proto.
V1_TYPE_CODES = {
    "Convolution": 4,
    "Data": 5,
    "Dropout": 6,
    "InnerProduct": 14,
    "Pooling": 17,
    "ReLU": 18,
    "Softmax": 20,
}


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number, wire):
    return varint(number << 3 | wire)


def length_delimited(number, payload):
    return tag(number, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string(number, text):
    return length_delimited(number, text.encode("utf-8"))


def floats(number, values, packed):
    """Repeated float field; unpacked writes a (tag, 4 bytes) record per value."""
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    if packed:
        return length_delimited(number, values.tobytes())
    field_tag = np.frombuffer(tag(number, FIXED32), dtype=np.uint8)
    records = np.empty((values.size, field_tag.size + 4), dtype=np.uint8)
    records[:, : field_tag.size] = field_tag
    records[:, field_tag.size :] = values.view(np.uint8).reshape(-1, 4)
    return records.tobytes()


def int64s(number, values, packed):
    if packed:
        return length_delimited(number, b"".join(varint(v) for v in values))
    return b"".join(tag(number, VARINT) + varint(v) for v in values)


def blob(array, layer_format, packed=True):
    """Encode a BlobProto: ``shape`` for the new format, legacy 4-D sizes for V1."""
    array = np.asarray(array, dtype=np.float32)
    if layer_format == "v1":
        dims = (1,) * (4 - array.ndim) + array.shape  # Caffe's legacy layout pads with leading 1s
        sizes = b"".join(tag(n, VARINT) + varint(d) for n, d in zip((1, 2, 3, 4), dims))
        return sizes + floats(5, array, packed)
    return length_delimited(7, int64s(1, array.shape, packed)) + floats(5, array, packed)


def layer(name, layer_type, blobs=(), layer_format="layer", packed=True, bottom=None, top=None):
    """Encode a LayerParameter (``"layer"``) or V1LayerParameter (``"v1"``)."""
    parts = []
    if layer_format == "v1":
        if bottom:
            parts.append(string(2, bottom))
        if top:
            parts.append(string(3, top))
        parts.append(string(4, name))
        parts.append(tag(5, VARINT) + varint(V1_TYPE_CODES[layer_type]))
        parts.extend(length_delimited(6, blob(b, "v1", packed)) for b in blobs)
        if blobs:
            # blobs_lr (field 7) as old Caffe wrote it: unpacked floats the reader must skip.
            parts.extend(tag(7, FIXED32) + np.float32(v).astype("<f4").tobytes() for v in (1.0, 2.0))
        if layer_type == "Convolution":
            # convolution_param (field 10) { num_output: 1 }: a nested message the reader skips.
            parts.append(length_delimited(10, tag(1, VARINT) + varint(len(blobs[0]))))
        return length_delimited(2, b"".join(parts))
    parts.append(string(1, name))
    parts.append(string(2, layer_type))
    if bottom:
        parts.append(string(3, bottom))
    if top:
        parts.append(string(4, top))
    parts.extend(length_delimited(7, blob(b, "layer", packed)) for b in blobs)
    if layer_type == "Convolution":
        parts.append(length_delimited(106, tag(1, VARINT) + varint(len(blobs[0]))))
    return length_delimited(100, b"".join(parts))


def vgg_layers(blocks, weights, fc8=None):
    """(name, type, blobs, bottom, top) of a VGG deploy net, ReLUs in place as in the VGG prototxts.

    ``blocks``: convs per block; ``weights``: {conv name: (weight, bias)};
    ``fc8``: optional (weight, bias) of a small InnerProduct head that the
    converter must skip.
    """
    layers, bottom = [], "data"
    for b, n_convs in enumerate(blocks, start=1):
        for i in range(1, n_convs + 1):
            conv = f"conv{b}_{i}"
            layers.append((conv, "Convolution", weights[conv], bottom, conv))
            layers.append((f"relu{b}_{i}", "ReLU", (), conv, conv))
            bottom = conv
        layers.append((f"pool{b}", "Pooling", (), bottom, f"pool{b}"))
        bottom = f"pool{b}"
    if fc8 is not None:
        layers.append(("fc8", "InnerProduct", fc8, bottom, "fc8"))
        layers.append(("drop8", "Dropout", (), "fc8", "fc8"))
        layers.append(("prob", "Softmax", (), "fc8", "prob"))
    return layers


def write_caffemodel(path, layers, layer_format="layer", packed=True, net_name="VGG_test"):
    """Write ``layers`` (as from :func:`vgg_layers`) as a binary NetParameter."""
    with open(path, "wb") as f:
        f.write(string(1, net_name))
        for name, layer_type, blobs, bottom, top in layers:
            f.write(layer(name, layer_type, blobs, layer_format, packed, bottom, top))


def deploy_prototxt(layers, input_shape, layer_format="layer", net_name="VGG_test"):
    """Text deploy prototxt for OpenCV's Caffe importer, in the same layer format.

    Only conv/ReLU/pool layers are declared (the classifier head is left out),
    so the net ends at the last pool.
    """
    lines = [f'name: "{net_name}"', 'input: "data"']
    if layer_format == "v1":
        lines += [f"input_dim: {d}" for d in input_shape]
    else:
        lines.append("input_shape { " + " ".join(f"dim: {d}" for d in input_shape) + " }")
    block = "layers" if layer_format == "v1" else "layer"
    for name, layer_type, blobs, bottom, top in layers:
        if layer_type not in ("Convolution", "ReLU", "Pooling"):
            continue
        type_text = layer_type.upper() if layer_format == "v1" else f'"{layer_type}"'
        params = ""
        if layer_type == "Convolution":
            params = f"convolution_param {{ num_output: {len(blobs[0])} pad: 1 kernel_size: 3 }}"
        elif layer_type == "Pooling":
            params = "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
        lines.append(
            f'{block} {{ bottom: "{bottom}" top: "{top}" name: "{name}" type: {type_text} {params} }}'
        )
    return "\n".join(lines) + "\n"
