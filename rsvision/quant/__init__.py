"""Low-bit quantizers plugged into any backbone (registered with ``register_quantizer``).

Built in: ``lq`` (LQ-Nets learned quantization, :mod:`rsvision.quant.lq`). Packed export
of a quantized RS-Net lives in :mod:`rsvision.run.packed`.
"""

from rsvision.quant.lq import (
    LQActQuantizer,
    LQSignedActQuantizer,
    LQWeightQuantizer,
    quantize_model,
    update_quantizers,
)
from rsvision.quant.modules import QuantConv2d, QuantLinear, QuantPoint, quantize_layers

__all__ = [
    "LQActQuantizer",
    "LQSignedActQuantizer",
    "LQWeightQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantPoint",
    "quantize_layers",
    "quantize_model",
    "update_quantizers",
]
