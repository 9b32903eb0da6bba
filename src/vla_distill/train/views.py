"""A job's training and validation views of an annotated dataset, and the one conversion of their items into a
policy's training batch.

Batch keys (shape letters: types.py): the policy's inputs, action (B, K, D) raw, action_is_pad (B, K); and, where
the job asks for them, phase_index (B,), direction_index (B,), direction_embedding (B, E).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla_distill.data.windows import WindowedDataset
from vla_distill.types import ACTION, DIRECTION_EMBEDDING, DIRECTION_INDEX, EPISODE_INDEX, PAD_SUFFIX, PHASE_INDEX


@dataclass
class Views:
    train: WindowedDataset
    val: WindowedDataset | None
    target_key: str  # the action column the loss targets (action.teacher or action)
    chunked: bool  # the target column already holds (K_teacher, D) chunks per frame
    horizon: int  # K: the chunk length the policy predicts
    cue_emb: torch.Tensor | None = None  # (Q, E) text embedding of every distinct cue
    driven: torch.Tensor | None = None  # (episodes,) bool: a policy drove it; its chunks count `driven_steps` steps
    driven_steps: int = 0


def make_views(ds, keys: list[str], target: str, horizon: int, train_eps: list[int], val_eps: list[int],
               cue_emb: torch.Tensor | None = None, row_arrays: dict | None = None, columns: dict | None = None,
               driven: list[int] = (), driven_steps: int = 0) -> Views:
    """keys: the columns to read, the target among them. A target that holds single actions is windowed K frames
    ahead (padded past the episode's end); one that holds chunks is read as it is. row_arrays: per-frame arrays
    (cached encoder features) passed through to WindowedDataset; columns: dataset columns replaced by derived values
    (a derived action target), windowed like the column. driven: episodes (positions) whose chunks count only their
    first `driven_steps` steps (0: all)."""
    chunked = len(ds.features[target]["shape"]) == 2
    deltas = {} if chunked else {target: range(horizon)}
    mask = None
    if driven_steps and len(driven):  # by episode_index, which a dataset from elsewhere may number with gaps
        index = [ep.index for ep in ds.episodes]
        mask = torch.zeros(max(index) + 1, dtype=torch.bool)
        mask[[index[e] for e in driven]] = True
        keys = [*keys, EPISODE_INDEX]
    kw = {"keys": keys, "row_arrays": row_arrays, "columns": columns}
    train = WindowedDataset(ds, deltas, episodes=train_eps, **kw)
    val = WindowedDataset(ds, deltas, episodes=val_eps, **kw) if val_eps else None
    return Views(train, val, target, chunked, horizon, cue_emb, mask, driven_steps)


def policy_batch(raw: dict, views: Views) -> dict:
    """Loader item -> the policy's training batch (see the module docstring)."""
    batch = dict(raw)
    act = batch.pop(views.target_key).float()
    k = views.horizon
    if views.chunked:  # (B, K_teacher, D) per frame -> the first K steps, none of them padding
        batch[ACTION] = act[:, :k]
        batch[ACTION + PAD_SUFFIX] = torch.zeros(act.shape[:1] + (k,), dtype=torch.bool)
    else:
        batch[ACTION] = act.reshape(len(act), k, -1)
        batch[ACTION + PAD_SUFFIX] = batch.pop(views.target_key + PAD_SUFFIX)
    if views.driven is not None:
        driven = views.driven[batch.pop(EPISODE_INDEX).reshape(-1).long()]
        batch[ACTION + PAD_SUFFIX] = batch[ACTION + PAD_SUFFIX].clone()
        batch[ACTION + PAD_SUFFIX][driven, views.driven_steps:] = True
    if PHASE_INDEX in batch:
        batch[PHASE_INDEX] = batch[PHASE_INDEX].reshape(-1)
    if DIRECTION_INDEX in batch:
        ids = batch[DIRECTION_INDEX].reshape(-1)
        batch[DIRECTION_INDEX] = ids
        batch[DIRECTION_EMBEDDING] = views.cue_emb[ids.clamp_min(0)]
    return batch
