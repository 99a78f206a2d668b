"""Static int8 quantisation of an exported embedding model, calibrated on gallery images (ONNX Runtime).

``--runtime onnxruntime-int8`` runs the network as ``--runtime onnxruntime`` does, but with its
convolutions and matrix products in int8: ONNX Runtime's static quantiser
(``onnxruntime.quantization.quantize_static``; https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
inserts QuantizeLinear/DequantizeLinear pairs (QDQ format), with one scale per output channel
for the weights (int8) and one per tensor for the activations (uint8, ranges from the
min/max seen on the calibration images). The rest of the graph (pooling, the CBAM gates'
sigmoids, the L2 normalisations) stays fp32.

Activation ranges come from real images of the gallery the model will search: too few or
unrepresentative images clip activations and cost recall. ``calibration_positions`` picks
``CALIBRATION_IMAGES`` evenly spaced over the gallery's order (a sorted gallery is grouped by
class, so the first images would all be one class). The Recall@1 this costs is measured on
CUB_mini in RESULTS.md; ``tests/test_quantize.py`` bounds how far the int8 embeddings are from
the fp32 ones on generated images.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError

CALIBRATION_IMAGES = 64  # images whose activations set the int8 ranges
CALIBRATION_BATCH = 16  # images per calibration forward pass (bounds its memory)


def calibration_positions(count: int, wanted: int = CALIBRATION_IMAGES) -> list[int]:
    """``wanted`` positions spread evenly over 0..count-1 (all of them when count ≤ wanted)."""
    if count <= 0:
        raise ConfigError("--runtime onnxruntime-int8 calibrates on gallery images, and the gallery is empty")
    return sorted({int(round(p)) for p in np.linspace(0, count - 1, min(wanted, count))})


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """The fp32 ONNX ``model`` (input ``images``) quantised to int8 (QDQ), activation ranges from
    ``calibration`` (N, 3, H, W) float32 images after the test transform. Deterministic for given inputs."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quant_pre_process, quantize_static)
    except ImportError:
        raise ConfigError("--runtime onnxruntime-int8 needs onnxruntime (and onnx, onnxscript): "
                          "pip install 'cbam-cgd-retrieval[export]'") from None
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            start = next(self.starts, None)
            return None if start is None else {"images": calibration[start:start + CALIBRATION_BATCH]}

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantised = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model)
        # Graph clean-up and shape inference first, as the quantiser's documentation asks; ONNX
        # Runtime's symbolic shape inference cannot follow the exporter's Concat of the branches,
        # and ONNX's own inference (still run) is enough for static image shapes.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantised), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return quantised.read_bytes()
