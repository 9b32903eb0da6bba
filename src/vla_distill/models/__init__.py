"""Policy models, one file each: the VLA-AD student (student.py), VITA-VLA (vita.py; its two training stages are
train/vita.py), a state MLP (state_mlp.py). Importing this package registers every model type."""

from vla_distill.models import state_mlp, student, vita  # noqa: F401  (registers; vita imports transformers lazily)
