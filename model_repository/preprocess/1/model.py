"""Triton python model ``preprocess``: encoded image bytes -> network inputs + original size.

The work is brainscan.preprocessing.preprocess_batch, the same function training uses.
A bad image fails its own request with INVALID_ARG; other requests are unaffected.
"""
import json

import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.preprocessing import InvalidImageError, preprocess_batch


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.classifier_size = tuple(pb_utils.get_output_config_by_name(config, contract.CLASSIFIER_INPUT)["dims"][:2])
        self.segmenter_size = tuple(pb_utils.get_output_config_by_name(config, contract.SEGMENTER_INPUT)["dims"][:2])

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, contract.IMAGE).as_numpy()
            try:
                cls, seg, sizes = preprocess_batch(encoded, self.classifier_size, self.segmenter_size)
            except InvalidImageError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(contract.CLASSIFIER_INPUT, cls),
                        pb_utils.Tensor(contract.SEGMENTER_INPUT, seg),
                        pb_utils.Tensor(contract.ORIGINAL_SIZE, sizes),
                    ]
                )
            )
        return responses
