"""The preprocessing graph's resize, stretch and mask done with OpenCV: the kit's preprocessing
before the served graphs took it over, now two things.

- The parity gate's reference (``export.served_graph.check_parity``): a served graph is
  written only when it gives this path's decisions and masks (Dice >= 0.99).
- How the ``local`` flavour's python runners feed their networks
  (``export/triton_models/onnx_runner.py``): a CPU runs OpenCV's dedicated area and linear
  kernels several times faster than the graph's weight products (512 x 512 colour to 224:
  about 1.3 ms against 3.2 ms, benchmarks/results/2026-12-04-resize), and that flavour runs
  its networks in Python anyway. The GPU flavours and the onnxruntime flavour keep the graph.

The rules are the graph's (``brainscan.preprocessing_graph``): area averaging when shrinking
on both axes, else linear at half-pixel centres; the intensities stretched per image to
0..255, a constant image (or one whose range is below ``CONSTANT_RANGE`` of its level) giving
zeros; grey repeated into three channels; the mask is the probabilities resized linearly to
the image's size, kept above ``contract.MASK_THRESHOLD``.
"""

from __future__ import annotations

import numpy as np

from brainscan import contract
from brainscan.preprocessing_graph import CONSTANT_RANGE


def model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image (HxW, HxWx1 or HxWx3, any dtype) -> a network's input, float32 [height, width, 3]."""
    import cv2

    pixels = np.asarray(image, dtype=np.float32)
    height, width = size
    interpolation = cv2.INTER_AREA if pixels.shape[0] >= height and pixels.shape[1] >= width else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    low, high = float(resized.min()), float(resized.max())
    given = float(pixels.max()) > float(pixels.min())
    varies = high - low > max(abs(high), abs(low)) * CONSTANT_RANGE
    out = np.empty((height, width, contract.CHANNELS), np.float32)
    if given and varies:
        np.multiply(np.subtract(resized, np.float32(low)), np.float32(255.0 / (high - low)), out=out)
    else:
        out.fill(0.0)
    return out


def model_inputs(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``PIXELS`` of a request (float32 [N, H, W, C]) -> the network's input [N, height, width, 3]."""
    return np.stack([model_input(image, size) for image in batch])


def mask(probability: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The segmenter's probabilities [h, w(, 1)] -> uint8 0/1 at ``size`` (height, width)."""
    import cv2

    prob = np.asarray(probability, np.float32).reshape(probability.shape[0], probability.shape[1])
    if tuple(size) != prob.shape:
        prob = cv2.resize(prob, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return (prob > contract.MASK_THRESHOLD).astype(np.uint8)


def masks(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The segmenter's output for a request [N, h, w, 1] -> ``MASK``, uint8 [N, height, width]."""
    return np.stack([mask(p, size) for p in probabilities])


def network_part(served):
    """The network inside a served graph (ONNX ModelProto), from its input to what the local
    runner needs of it: the classifier's outputs (probability and score; the score is computed
    from the network's own taps), the segmenter's probabilities. Returns (model, (height, width)
    of the network input); (None, None) for a graph that takes PIXELS without resizing them to a
    network's input (the benchmarks' free networks), which runs whole."""
    import onnx
    import onnx.utils

    outputs = [o.name for o in served.graph.output]
    network = contract.SEGMENTER if outputs == [contract.MASK] else contract.CLASSIFIER
    wanted = [contract.SEGMENTER_OUTPUT] if network == contract.SEGMENTER else outputs
    name = contract.NETWORK_INPUT[network]
    if name not in {output for node in served.graph.node for output in node.output}:
        return None, None
    part = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(served)).extract_model([name], wanted)
    dims = part.graph.input[0].type.tensor_type.shape.dim
    return part, (int(dims[1].dim_value), int(dims[2].dim_value))
