"""Model files that never unpickle: how to rebuild the architecture as JSON, the weights in safetensors.

``DIR/model.json`` (format ``edgeprune-model/2``) names the model's builder - ``zoo:NAME``,
``py:package.module:factory`` or ``file:/path/file.py:factory`` with the file's SHA-256 (see
``edgeprune.refs``) - its keyword arguments, the input shape, every conv (ConvTranspose and
1d/3d included), linear and norm layer's widths (BatchNorm/InstanceNorm ``num_features``,
GroupNorm ``num_groups``/``num_channels``, LayerNorm ``normalized_shape``) and the shape of any
other parameter or buffer; ``DIR/model.safetensors`` holds the weights and buffers. ``load`` calls
the builder, resizes those layers to the recorded widths and loads the weights strictly, so a
missing, truncated or mismatched file is a one-line error, never a pickle. Format 1 files (a zoo
``arch`` and conv/linear/BatchNorm widths) still load.

Nothing corrupt gets in: ``save`` records a checksum of every tensor (``tensors_sha256`` in the
safetensors metadata) and ``load`` verifies it. Before anything is built or allocated, ``load``
checks model.json against its format's schema (exact keys, types, bounds, groups dividing
channels) and every recorded width against the safetensors header (read on its own: its length
and each tensor's offsets against the file's size), and a zoo model's arguments against its
factory's signature; a zoo model is then built on the meta device, so memory is only taken for the
tensors the file holds. Weights of another dtype than the model's are refused unless
``allow_cast``. Every failure is one ``EdgepruneError`` line; loading writes nothing.

A ``py:``/``file:`` builder is code: ``load`` runs it only when the user vouched for what it resolves
to (the trust list records the file and its hash; naming it again with ``builder=``; ``trust_code=True``),
never importing it from the current folder or the model folder unless named now (see ``edgeprune.refs``).
A file the user edited after vouching is refused until they vouch again once (naming it, or
``allow_changed=True``); a ``file:`` builder whose file changed since saving loads once the user vouched
for its content, with a warning that it still builds the recorded architecture.

``resolve`` is the one rule for what a command's model argument means: a model folder, or a
reference (zoo name, ``package.module:factory``, ``path/file.py:factory``) with its arguments.

The package: model.json's schema in ``spec``, the safetensors header in ``header``, ``save`` and ``load`` in
``files``, ``resolve`` in ``resolver``.
"""

from edgeprune.io.files import CHECKSUM_KEY, build, check_zoo_kwargs, input_shape_of, load, read_spec, save, vouched
from edgeprune.io.header import TensorInfo, WeightsHeader, check_against_header, read_header
from edgeprune.io.resolver import (
    ModelRef,
    Resolved,
    activation_bytes,
    check_model_memory,
    classify,
    is_folder_ref,
    parameter_bytes,
    resolve,
    resolve_for_data,
    resolve_model,
)
from edgeprune.io.spec import FORMAT, SPEC_FILE, WEIGHTS_FILE, is_model_dir, layer_widths, model_spec, validate_spec

__all__ = [
    "CHECKSUM_KEY",
    "FORMAT",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ModelRef",
    "Resolved",
    "TensorInfo",
    "WeightsHeader",
    "activation_bytes",
    "build",
    "check_against_header",
    "check_model_memory",
    "check_zoo_kwargs",
    "classify",
    "input_shape_of",
    "is_folder_ref",
    "is_model_dir",
    "layer_widths",
    "load",
    "model_spec",
    "parameter_bytes",
    "read_header",
    "read_spec",
    "resolve",
    "resolve_for_data",
    "resolve_model",
    "save",
    "validate_spec",
    "vouched",
]
