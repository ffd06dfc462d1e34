"""Triton python model ``preprocess``: encoded image bytes -> network inputs + original size.

The work is brainscan.preprocessing.preprocess_batch, the same function training uses.
Every request stands alone: a bad image fails its own request with INVALID_ARG, and any
other failure (out of memory, a decoder's own exception) fails only that request too, with
a message that names it; the other requests of the batch are answered normally.
"""
import json

import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.preprocessing import InvalidImageError, preprocess_batch


def failed(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


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
                responses.append(failed(str(exc)))
                continue
            except MemoryError:
                responses.append(failed("not enough memory to decode this image on the server"))
                continue
            except Exception as exc:  # a decoder's own error must not fail the batch's other requests
                responses.append(failed(f"cannot decode this image ({type(exc).__name__}: {exc})"))
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
