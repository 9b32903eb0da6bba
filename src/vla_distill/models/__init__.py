"""Policy models; importing this package registers every model type."""

from vla_distill.models import state_mlp, student, vita  # noqa: F401  (registers; vita imports transformers lazily)
