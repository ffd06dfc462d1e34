"""Triton python model ``preprocess``: encoded image bytes -> PIXELS, the decoded image at its
own size (brainscan.preprocessing.pixels_batch). The networks' graphs do the rest.

Every request stands alone: a bad image fails its own request with INVALID_ARG, and any
other failure (out of memory, a decoder's own exception) fails only that request too, with
a message that names it; the other requests of the batch are answered normally.
"""

import json

import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.preprocessing import InvalidImageError, pixels_batch


def failed(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        # the largest side the networks take (a GPU engine's profile ends there)
        given = config.get("parameters", {}).get(contract.MAX_SIDE_PARAMETER, {}).get("string_value")
        self.max_side = int(given) if given else contract.MAX_IMAGE_SIDE

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, contract.IMAGE).as_numpy()
            try:
                pixels = pixels_batch(encoded, self.max_side)
            except InvalidImageError as exc:
                responses.append(failed(str(exc)))
                continue
            except MemoryError:
                responses.append(failed("not enough memory to decode this image on the server"))
                continue
            except Exception as exc:  # a decoder's own error must not fail the batch's other requests
                responses.append(failed(f"cannot decode this image ({type(exc).__name__}: {exc})"))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.PIXELS, pixels)]))
        return responses
