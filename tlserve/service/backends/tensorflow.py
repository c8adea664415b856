"""TensorFlow SavedModel backend, for models configured with ``backend = "tensorflow"``.

TensorFlow is imported here only, when the first such model loads (≈ 20 s and ≈ 600 MB the first time).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tlserve import repository as repo
from tlserve.service.backends.base import Backend, Outputs


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def load(self) -> None:
        if self.manifest.artifact("savedmodel") is None:
            raise ValueError(
                "no SavedModel in this version (export it with tlserve export --format savedmodel)"
            )
        import tensorflow as tf

        try:
            if self.settings.intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(self.settings.intra_op_threads)
            if self.settings.inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(self.settings.inter_op_threads)
        except RuntimeError:  # NOTE: only possible before TensorFlow's first op; a second model reuses it
            pass
        self._tf = tf
        self._loaded: Any = tf.saved_model.load(str(self.version_dir))
        self._signature = self._loaded.signatures[repo.SIGNATURE_PIXELS]
        self.artifact = repo.SAVED_MODEL_FILE
        gpus = tf.config.list_logical_devices("GPU")
        self.providers = [d.name for d in gpus] + ["/device:CPU:0"]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels).probabilities

    def outputs(self, pixels: np.ndarray) -> Outputs:
        got = self._signature(**{repo.INPUT_NAME: self._tf.constant(pixels)})
        probabilities = np.asarray(got[repo.OUTPUT_NAME].numpy(), dtype=np.float32)
        if repo.EMBEDDING_NAME not in got:
            return Outputs(probabilities)
        return Outputs(probabilities, np.asarray(got[repo.EMBEDDING_NAME].numpy(), dtype=np.float32))

    def unload(self) -> None:
        self._signature = None
        self._loaded = None
