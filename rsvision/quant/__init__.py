"""Low-bit quantizers plugged into any backbone (registered with ``register_quantizer``).

Built in: ``lq`` (LQ-Nets learned quantization, :mod:`rsvision.quant.lq`). Packed export
of a quantized RS-Net lives in :mod:`rsvision.quant.export`.
"""

from rsvision.quant import export  # noqa: F401  (registers the packed format)
from rsvision.quant.lq import LQActQuantizer, LQSignedActQuantizer, LQWeightQuantizer, quantize_model
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
]
