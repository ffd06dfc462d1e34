"""Triton python model ``postprocess``: segmenter probabilities -> binary MASK at the
input image's own height x width (brainscan.preprocessing.postprocess_batch)."""
import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.preprocessing import InvalidImageError, postprocess_batch


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = pb_utils.get_input_tensor_by_name(request, contract.SEGMENTER_OUTPUT).as_numpy()
            sizes = pb_utils.get_input_tensor_by_name(request, contract.ORIGINAL_SIZE).as_numpy()
            try:
                mask = postprocess_batch(probabilities, sizes)
            except InvalidImageError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except Exception as exc:  # this request fails alone, the batch's others are answered
                error = pb_utils.TritonError(f"postprocess failed: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.MASK, mask)]))
        return responses
