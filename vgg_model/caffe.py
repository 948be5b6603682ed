"""Pure-Python reader for Caffe ``.caffemodel`` files (no Caffe, no protobuf package).

A ``.caffemodel`` is a binary protobuf ``NetParameter`` (Caffe's
``src/caffe/proto/caffe.proto``).  This module decodes the protobuf wire
format directly (https://protobuf.dev/programming-guides/encoding/) and reads
only the messages and fields needed to extract layer weights:

* ``NetParameter``: ``name`` = 1, ``layers`` = 2 (``V1LayerParameter``, the
  legacy format of the 2014-2015 model-zoo files such as the VGG ones),
  ``layer`` = 100 (``LayerParameter``, the current format).
* ``LayerParameter``: ``name`` = 1, ``type`` = 2 (string), ``blobs`` = 7.
* ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (``LayerType`` enum),
  ``blobs`` = 6; field 1 holds a pre-2014 ``V0LayerParameter``, not supported.
* ``BlobProto``: legacy 4-D sizes ``num`` = 1, ``channels`` = 2,
  ``height`` = 3, ``width`` = 4; ``data`` = 5 (repeated float);
  ``diff`` = 6; ``shape`` = 7 (``BlobShape``: ``dim`` = 1, repeated int64);
  ``double_data`` = 8; ``double_diff`` = 9.

Repeated numeric fields are accepted both packed and unpacked (old protobuf
versions wrote unpacked ones).  Float payloads are decoded with
numpy views of a memory map, so multi-hundred-megabyte files decode in
seconds and layers whose data is not wanted are never copied.
"""

import math
import mmap
import os
import re
from dataclasses import dataclass, field

import numpy as np

# Protobuf wire types.
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# V1LayerParameter.LayerType values, mapped to the type strings of the current format.
V1_LAYER_TYPES = {
    0: "None",
    1: "Accuracy",
    2: "BNLL",
    3: "Concat",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    7: "EuclideanLoss",
    8: "Flatten",
    9: "HDF5Data",
    10: "HDF5Output",
    11: "Im2col",
    12: "ImageData",
    13: "InfogainLoss",
    14: "InnerProduct",
    15: "LRN",
    16: "MultinomialLogisticLoss",
    17: "Pooling",
    18: "ReLU",
    19: "Sigmoid",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    23: "TanH",
    24: "WindowData",
    25: "Eltwise",
    26: "Power",
    27: "SigmoidCrossEntropyLoss",
    28: "HingeLoss",
    29: "MemoryData",
    30: "ArgMax",
    31: "Threshold",
    32: "DummyData",
    33: "Slice",
    34: "MVN",
    35: "AbsVal",
    36: "Silence",
    37: "ContrastiveLoss",
    38: "Exp",
    39: "Deconvolution",
}

FORMAT_LAYER = "layer"  # NetParameter.layer (field 100), Caffe since 2015
FORMAT_V1 = "layers (V1)"  # NetParameter.layers (field 2), legacy V1LayerParameter

# Field names per message, only for error messages.
_FIELD_NAMES = {
    "NetParameter": {1: "name", 2: "layers", 100: "layer"},
    "LayerParameter": {1: "name", 2: "type", 7: "blobs"},
    "V1LayerParameter": {1: "layer (V0)", 4: "name", 5: "type", 6: "blobs"},
    "BlobProto": {1: "num", 2: "channels", 3: "height", 4: "width", 5: "data", 6: "diff", 7: "shape", 8: "double_data"},
    "BlobShape": {1: "dim"},
}

# Magic numbers of files people mistake for a caffemodel.
_FOREIGN_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Caffe's .caffemodel.h5 snapshot format is not supported)"),
    (b"PK\x03\x04", "a zip archive (for example a PyTorch .pt/.pth checkpoint)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"GIF8", "a GIF image"),
)


_NOT_CAFFE = ": the file is corrupt or not a .caffemodel"


class CaffeFormatError(ValueError):
    """The file is not a readable binary Caffe NetParameter."""


@dataclass
class CaffeLayer:
    """One layer: its name, type string and parameter blobs.

    ``blobs`` holds float32 arrays, or is empty when the layer's data was not
    requested; ``blob_shapes`` is always filled.
    """

    name: str
    type: str
    blobs: list = field(default_factory=list)
    blob_shapes: list = field(default_factory=list)


@dataclass
class CaffeNet:
    """A decoded NetParameter: network name, layers in file order and the layer format found."""

    name: str
    layers: list
    format: str

    def layer_names(self):
        return [layer.name for layer in self.layers]


class _Decoder:
    """Protobuf wire-format decoding over a bytes-like buffer (bytes or mmap)."""

    def __init__(self, data, path):
        self.data = data
        self.size = len(data)
        self.path = path

    def fail(self, message):
        raise CaffeFormatError(f"{self.path}: {message}")

    def overrun(self, what, offset, need_end, end):
        if need_end > self.size:
            self.fail(f"truncated: {what} at byte offset {offset} runs past the end of the file (size {self.size})")
        self.fail(f"corrupt: {what} at byte offset {offset} runs past the end of its enclosing message (byte {end})")

    def varint(self, pos, end, what):
        start, result, shift, data = pos, 0, 0, self.data
        while True:
            if pos >= end:
                self.overrun(what, start, pos + 1, end)
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                self.fail(f"malformed varint in {what} at byte offset {start} (longer than 10 bytes){_NOT_CAFFE}")

    def field(self, pos, end, message):
        """Decode the field at ``pos``: (number, wire type, value, next position).

        ``value`` is an int for varints, the byte offset of the payload for
        fixed32/fixed64, and a ``(start, end)`` span for length-delimited fields.
        """
        tag_pos = pos
        tag, pos = self.varint(pos, end, f"a field tag of {message}")
        number, wire = tag >> 3, tag & 7
        what = f"field {number} ({_FIELD_NAMES.get(message, {}).get(number, 'unknown')}) of {message}"
        if number == 0:
            self.fail(f"invalid field number 0 in {message} at byte offset {tag_pos}{_NOT_CAFFE}")
        if wire == VARINT:
            value, pos = self.varint(pos, end, what)
            return number, wire, value, pos
        if wire in (FIXED32, FIXED64):
            width = 4 if wire == FIXED32 else 8
            if pos + width > end:
                self.overrun(what, tag_pos, pos + width, end)
            return number, wire, pos, pos + width
        if wire == LENGTH_DELIMITED:
            length, pos = self.varint(pos, end, what)
            if pos + length > end:
                self.overrun(what, tag_pos, pos + length, end)
            return number, wire, (pos, pos + length), pos + length
        if wire in (START_GROUP, END_GROUP):
            self.fail(f"unsupported wire type {wire} (group) for {what} at byte offset {tag_pos}{_NOT_CAFFE}")
        self.fail(f"invalid wire type {wire} for {what} at byte offset {tag_pos}{_NOT_CAFFE}")

    def fields(self, start, end, message):
        pos = start
        while pos < end:
            number, wire, value, pos = self.field(pos, end, message)
            yield number, wire, value

    def string(self, span, what):
        try:
            return bytes(self.data[span[0] : span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} at byte offset {span[0]} is not valid UTF-8 text")

    def expect(self, wire, wanted, what, offset):
        if wire != wanted:
            self.fail(f"{what} has wire type {wire}, expected {wanted}, near byte offset {offset}")

    def packed_varints(self, span, what):
        values, pos = [], span[0]
        while pos < span[1]:
            value, pos = self.varint(pos, span[1], what)
            values.append(value)
        return values

    def fixed_run(self, tag_pos, end, width):
        """Count consecutive unpacked fixed-width records sharing the tag at ``tag_pos``.

        Unpacked repeated floats are written as (tag, value) records; instead of
        looping in Python, view the bytes as fixed-size records and count how
        many leading ones start with the same tag.  Returns
        (count, offset of the first value, stride between values, next position).
        No view of the buffer outlives this call.
        """
        _, tag_end = self.varint(tag_pos, end, "a field tag")
        tag_len = tag_end - tag_pos
        record = tag_len + width
        n_max = (end - tag_pos) // record
        records = np.frombuffer(self.data, dtype=np.uint8, count=n_max * record, offset=tag_pos).reshape(n_max, record)
        same = np.all(records[:, :tag_len] == records[0, :tag_len], axis=1)
        count = n_max if same.all() else int(np.argmin(same))
        del records
        return count, tag_end, record, tag_pos + count * record

    def floats(self, offset, count, stride, itemsize):
        """Copy ``count`` little-endian floats of ``itemsize`` bytes, ``stride`` bytes apart, to float32."""
        view = np.ndarray((count,), dtype=f"<f{itemsize}", buffer=self.data, offset=offset, strides=(stride,))
        # astype copies, so no view of the memory map outlives the reader.
        return view.astype(np.float32)


def _sniff_foreign(head):
    for magic, description in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return description
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (for example an old PyTorch checkpoint)"
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return "a text file (a .prototxt? pass it with --prototxt and the binary weights with --caffemodel)"
    return None


def _decode_blob(dec, span, what, load_data):
    """Decode one BlobProto: returns (shape, float32 array or None)."""
    start, end = span
    legacy = {}
    shape = None
    chunks = []  # (offset, count, stride, itemsize) of each run of float or double values
    pos = start
    while pos < end:
        tag_pos = pos
        number, wire, value, pos = dec.field(pos, end, "BlobProto")
        field_name = f"{_FIELD_NAMES['BlobProto'].get(number, number)} of {what}"
        if number in (1, 2, 3, 4):
            dec.expect(wire, VARINT, field_name, tag_pos)
            legacy[number] = value
        elif number == 7:
            dec.expect(wire, LENGTH_DELIMITED, field_name, tag_pos)
            shape = []
            for dim_number, dim_wire, dim_value in dec.fields(value[0], value[1], "BlobShape"):
                if dim_number != 1:
                    continue
                if dim_wire == LENGTH_DELIMITED:
                    shape.extend(dec.packed_varints(dim_value, f"shape.dim of {what}"))
                else:
                    dec.expect(dim_wire, VARINT, f"shape.dim of {what}", value[0])
                    shape.append(dim_value)
        elif number in (5, 6, 8, 9):
            itemsize = 4 if number in (5, 6) else 8
            if wire == LENGTH_DELIMITED:
                if (value[1] - value[0]) % itemsize:
                    dec.fail(f"packed {field_name} is not a whole number of values")
                run = (value[0], (value[1] - value[0]) // itemsize, itemsize, itemsize)
            else:
                dec.expect(wire, FIXED32 if itemsize == 4 else FIXED64, field_name, tag_pos)
                count, offset, stride, pos = dec.fixed_run(tag_pos, end, itemsize)
                run = (offset, count, stride, itemsize)
            # diff (6) and double_diff (9) are gradients, never weights: skipped.
            if number in (5, 8):
                chunks.append(run)
    if len({size for _, _, _, size in chunks}) > 1:
        dec.fail(f"{what} has both float and double data")
    count = sum(n for _, n, _, _ in chunks)

    if shape is None:
        dims = [legacy.get(k, 0) for k in (1, 2, 3, 4)]
        if any(dims):
            # Legacy blobs are always 4-D; Caffe pads lower-rank shapes with
            # leading 1s (a bias is 1x1x1xN), so drop them.
            while len(dims) > 1 and dims[0] == 1:
                dims.pop(0)
            shape = dims
        else:
            shape = [count]
    if any(d >= 1 << 63 for d in shape):
        dec.fail(f"{what} has a negative dimension in its shape")
    shape = tuple(int(d) for d in shape)
    expected = math.prod(shape)
    if expected != count:
        dec.fail(f"{what} declares shape {shape} ({expected} values) but holds {count} values")
    if not load_data:
        return shape, None
    parts = [dec.floats(*chunk) for chunk in chunks]
    if len(parts) == 1:
        array = parts[0]
    else:
        array = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return shape, array.reshape(shape)


def _decode_layer(dec, span, message, index, wanted):
    if message == "LayerParameter":
        name_field, type_field, blobs_field = 1, 2, 7
    else:
        name_field, type_field, blobs_field = 4, 5, 6
    name, layer_type, blob_spans = None, None, []
    for number, wire, value in dec.fields(span[0], span[1], message):
        if number == name_field:
            dec.expect(wire, LENGTH_DELIMITED, f"name of layer #{index}", span[0])
            name = dec.string(value, f"name of layer #{index}")
        elif number == type_field:
            if message == "LayerParameter":
                dec.expect(wire, LENGTH_DELIMITED, f"type of layer #{index}", span[0])
                layer_type = dec.string(value, f"type of layer #{index}")
            else:
                dec.expect(wire, VARINT, f"type of layer #{index}", span[0])
                layer_type = V1_LAYER_TYPES.get(value, f"V1 type {value}")
        elif number == blobs_field:
            dec.expect(wire, LENGTH_DELIMITED, f"blob of layer #{index}", span[0])
            blob_spans.append(value)
        elif number == 1 and message == "V1LayerParameter":
            dec.fail(
                f"layer #{index} at byte offset {span[0]} uses the pre-2014 V0 layer format, which is not "
                "supported; upgrade the file with Caffe's upgrade_net_proto_binary tool"
            )
    name = name if name is not None else ""
    load = wanted is None or name in wanted
    layer = CaffeLayer(name=name, type=layer_type or "")
    for i, blob_span in enumerate(blob_spans):
        shape, array = _decode_blob(dec, blob_span, f"blob {i} of layer {name or '#' + str(index)!r}", load)
        layer.blob_shapes.append(shape)
        if load:
            layer.blobs.append(array)
    return layer


def _decode_net(dec, wanted):
    name = ""
    v1_spans, layer_spans = [], []
    for number, wire, value in dec.fields(0, dec.size, "NetParameter"):
        if number == 1 and wire == LENGTH_DELIMITED:
            name = dec.string(value, "NetParameter.name")
        elif number == 2 and wire == LENGTH_DELIMITED:
            v1_spans.append(value)
        elif number == 100 and wire == LENGTH_DELIMITED:
            layer_spans.append(value)
    if v1_spans and layer_spans:
        dec.fail(
            "holds both 'layer' (field 100) and legacy 'layers' (field 2) entries; Caffe itself refuses such files"
        )
    if not v1_spans and not layer_spans:
        dec.fail(
            "no layers found (neither NetParameter.layer, field 100, nor legacy NetParameter.layers, "
            "field 2): is this a .caffemodel?"
        )
    message, spans, fmt = (
        ("LayerParameter", layer_spans, FORMAT_LAYER) if layer_spans else ("V1LayerParameter", v1_spans, FORMAT_V1)
    )
    layers = [_decode_layer(dec, span, message, i, wanted) for i, span in enumerate(spans)]
    return CaffeNet(name=name, layers=layers, format=fmt)


def read_caffemodel(path, layers=None):
    """Read a binary ``.caffemodel``.

    ``layers``: optional collection of layer names whose blob data to decode;
    the others are listed with their blob shapes only (this keeps e.g. the
    400 MB ``fc6`` of VGG19 out of memory).  Raises :class:`CaffeFormatError`
    for truncated, corrupt or foreign files.
    """
    path = os.fspath(path)
    wanted = None if layers is None else set(layers)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CaffeFormatError(f"{path}: empty file, not a .caffemodel")
        foreign = _sniff_foreign(f.read(512))
        if foreign:
            raise CaffeFormatError(f"{path}: this is {foreign}, not a binary .caffemodel")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _decode_net(_Decoder(data, path), wanted)


_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:;,\[\]<>]|[^\s{}:;,\[\]<>"\'#]+', re.S)


def _tokenize(text, path):
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise CaffeFormatError(f"{path}:{line}: cannot tokenize prototxt near {text[pos:pos + 20]!r}")
        token = match.group()
        if not (token[0].isspace() or token[0] == "#"):
            tokens.append((token, line))
        line += token.count("\n")
        pos = match.end()
    return tokens


def _parse_entries(tokens, i, closing, path):
    """Parse ``key: value`` / ``key { ... }`` entries until ``closing``; returns (entries, next index)."""
    entries = []
    while i < len(tokens):
        token, line = tokens[i]
        if token == closing:
            return entries, i + 1
        if token in "{}<>[]:;,":
            raise CaffeFormatError(f"{path}:{line}: unexpected {token!r} in prototxt")
        key, i = token, i + 1
        if i < len(tokens) and tokens[i][0] == ":":
            i += 1
        if i >= len(tokens):
            raise CaffeFormatError(f"{path}:{line}: prototxt ends after {key!r}")
        value = tokens[i][0]
        if value in ("{", "<"):
            children, i = _parse_entries(tokens, i + 1, "}" if value == "{" else ">", path)
            entries.append((key, children))
        elif value == "[":
            i += 1
            while i < len(tokens) and tokens[i][0] != "]":
                if tokens[i][0] != ",":
                    entries.append((key, _unquote(tokens[i][0])))
                i += 1
            i += 1
        else:
            entries.append((key, _unquote(value)))
            i += 1
        if i < len(tokens) and tokens[i][0] in (";", ","):
            i += 1
    if closing is not None:
        raise CaffeFormatError(f"{path}: prototxt ends before a closing {closing!r}")
    return entries, i


def _unquote(token):
    if token[:1] in "\"'" and len(token) >= 2:
        return token[1:-1].replace('\\"', '"').replace("\\'", "'").replace("\\\\", "\\")
    return token


def read_prototxt_layer_names(path):
    """Names of the top-level ``layer`` / ``layers`` blocks of a text prototxt, in order.

    A minimal protobuf text-format parser, enough to cross-check a caffemodel's
    layer names against its deploy prototxt.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    entries, _ = _parse_entries(_tokenize(text, path), 0, None, path)
    names = []
    for key, value in entries:
        if key in ("layer", "layers") and isinstance(value, list):
            names.extend(v for k, v in value if k == "name" and isinstance(v, str))
    return names
