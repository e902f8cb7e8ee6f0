"""The same stateless work as ``POST /v1/gradient`` as a Seldon MLServer model, for
``python -m bench.service --mlserver PATH`` (MLServer lives in its own virtualenv: it is not a
dependency of poolgrad). Inputs ``X`` and ``dA``, outputs ``A`` and ``dX``, max pooling 2x2/2,
through the same engine; MLServer's V2 JSON endpoint and codecs around it.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

import engine

SPEC = engine.PoolSpec(mode="max", pool_size=(2, 2))


class PoolRuntime(MLModel):  # type: ignore[misc]  # MLServer: not installed here
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        A, state = engine.forward(inputs["X"], SPEC)
        dX = engine.backward(state, inputs["dA"])
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("A", A), NumpyCodec.encode_output("dX", dX)],
        )
