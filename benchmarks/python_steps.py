"""The ensemble's python steps as they were before the networks took over resizing (kit
0.1): kept only so that `brainscan bench ceiling` measures that design beside the current
one in the same run. Triton loads this file as ``model.py`` of two models: ``preprocess``
(decode, resize to each network's size with OpenCV, stretch: two FP32 tensors and the
original size) and ``postprocess`` (the segmenter's probabilities back to the original size
with OpenCV, thresholded), telling them apart by the config's ``step`` parameter. The
resize and the stretch are ``brainscan.opencv_path``'s, the parity gate's reference.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.opencv_path import mask, model_input
from brainscan.preprocessing import InvalidImageError, decode_image

ORIGINAL_SIZE = "ORIGINAL_SIZE"  # INT32 [2]


def _failed(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.step = config["parameters"]["step"]["string_value"]
        outputs = {o["name"]: o for o in config["output"]}
        self.sizes = {
            name: tuple(outputs[name]["dims"][:2])
            for name in (contract.CLASSIFIER_INPUT, contract.SEGMENTER_INPUT)
            if name in outputs
        }

    def _preprocess(self, request):
        data = pb_utils.get_input_tensor_by_name(request, contract.IMAGE).as_numpy().reshape(-1)[0]
        image = decode_image(bytes(data))
        tensors = [pb_utils.Tensor(name, model_input(image, size)[None]) for name, size in self.sizes.items()]
        tensors.append(pb_utils.Tensor(ORIGINAL_SIZE, np.array([image.shape[:2]], np.int32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _postprocess(self, request):
        probability = pb_utils.get_input_tensor_by_name(request, contract.SEGMENTER_OUTPUT).as_numpy()
        size = pb_utils.get_input_tensor_by_name(request, ORIGINAL_SIZE).as_numpy()[0]
        out = mask(probability[0], tuple(int(s) for s in size))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.MASK, out[None])])

    def execute(self, requests):
        step = self._preprocess if self.step == contract.PREPROCESS else self._postprocess
        responses = []
        for request in requests:
            try:
                responses.append(step(request))
            except InvalidImageError as exc:
                responses.append(_failed(str(exc)))
        return responses
