"""The models' losses as pure functions (each model's `forward` calls them), and the one place the VLA-AD weights
are applied.

VLA-AD student:  L = action + w_phase * phase_CE + w_dir * InfoNCE(direction, cue text)   (seed: 0.1, 0.05)
                 [+ w_aux * MSE(privileged state), ours: only when the run names a state column to predict]
VITA-VLA:        stage 1 alignment distance; stage 2 smooth-L1 arm + BCE gripper

Shapes (types.py): B batch, K chunk, D action dim, P phases, E embedding dim, Q distinct cues, n_bins
discretization bins. Labels of -1 (masked by the audit, or no cue for that frame) and padded chunk steps
contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

ACTION_LOSSES = ("mse", "l1", "smooth_l1", "discrete")


@dataclass(frozen=True)
class LossConfig:
    action: str = "mse"  # mse | l1 | smooth_l1 | discrete (256-bin cross-entropy; needs the discrete head)
    dim_weights: tuple[float, ...] = ()  # per action dimension; empty = all 1
    phase_weight: float = 0.1
    direction_weight: float = 0.05
    aux_state_weight: float = 1.0  # applies only to a model with an auxiliary state head (train --aux-state)

    def __post_init__(self):
        if self.action not in ACTION_LOSSES:
            raise ValueError(f"action loss: {self.action!r} is not one of {list(ACTION_LOSSES)}")
        for name in ("phase_weight", "direction_weight", "aux_state_weight"):
            if not 0 <= getattr(self, name) < float("inf"):  # also refuses NaN
                raise ValueError(f"{name}: must be a finite number >= 0, got {getattr(self, name)}")
        finite = all(0 <= w < float("inf") for w in self.dim_weights)
        if self.dim_weights and not (finite and sum(self.dim_weights) > 0):
            raise ValueError(f"dim_weights: each must be a finite number >= 0, not all 0; got {list(self.dim_weights)}")


def action_loss(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None, kind: str = "mse",
                dim_weights: torch.Tensor | None = None) -> torch.Tensor:
    """pred: (B, K, D) normalized, or (B, K, D, n_bins) logits for kind="discrete"; target: (B, K, D) normalized
    (discrete: in [-1, 1]); pad: (B, K) True where the step lies past the episode end. Returns (B,): the mean over
    valid steps and (weighted) dimensions."""
    if kind == "discrete":
        n_bins = pred.shape[-1]
        bins = ((target.clamp(-1, 1) + 1) / 2 * (n_bins - 1)).round().long()
        per = F.cross_entropy(pred.flatten(0, 2).float(), bins.flatten(), reduction="none").view(target.shape)
    elif kind == "mse":
        per = F.mse_loss(pred.float(), target, reduction="none")
    elif kind == "l1":
        per = F.l1_loss(pred.float(), target, reduction="none")
    elif kind == "smooth_l1":
        per = F.smooth_l1_loss(pred.float(), target, reduction="none")
    else:
        raise ValueError(f"unknown action loss {kind!r}")
    w = torch.ones(per.shape[-1], device=per.device) if dim_weights is None else dim_weights.to(per.device)
    per = (per * w).sum(-1) / w.sum()  # (B, K)
    valid = torch.ones_like(per) if pad is None else (~pad).float()
    return (per * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def phase_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, P), labels (B,) with -1 = masked. Returns per-sample CE (B,) (0 where masked) and the mask."""
    valid = labels >= 0
    per = F.cross_entropy(logits.float(), labels.clamp_min(0).long(), reduction="none")
    return per * valid, valid


def direction_loss(z: torch.Tensor, cue_ids: torch.Tensor, cue_emb: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE between student embeddings and cue text embeddings.

    z: (B, E) normalized student embeddings; cue_ids: (B,) cue index per frame, -1 = none; cue_emb: (B, E)
    normalized text embedding of each frame's cue. Frames that share a cue are positives of each other: the
    text side uses each distinct cue once (so a duplicate is never a negative), and a cue's positives on the
    student side are all frames carrying it. Returns a scalar (0 when fewer than two distinct cues are present:
    with one cue there is nothing to contrast). Inside: N valid rows, Q distinct cues among them."""
    valid = cue_ids >= 0
    if valid.sum() < 2:
        return z.sum() * 0
    z, ids, emb = z[valid].float(), cue_ids[valid], cue_emb[valid].float()
    uniq, inverse = torch.unique(ids, return_inverse=True)  # (Q,), (N,)
    if len(uniq) < 2:
        return z.sum() * 0
    first = torch.zeros(len(uniq), dtype=torch.long, device=z.device).scatter_(0, inverse,
                                                                               torch.arange(len(ids), device=z.device))
    text = emb[first]  # (Q, E): one row per distinct cue
    logits = logit_scale.exp().clamp(max=100) * z @ text.T  # (N, Q)
    student_to_text = F.cross_entropy(logits, inverse)
    positives = F.one_hot(inverse, len(uniq)).T.bool()  # (Q, N)
    col = logits.T  # (Q, N)
    text_to_student = -(torch.logsumexp(col.masked_fill(~positives, float("-inf")), 1) - torch.logsumexp(col, 1)).mean()
    return (student_to_text + text_to_student) / 2


def aux_state_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target: (B, A) normalized privileged state. The mean squared error over samples and dimensions."""
    return F.mse_loss(pred.float(), target)


def across_processes(z: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """When training under torch.distributed, every process's rows, rank order (z keeps its gradient): the
    contrastive loss is over the whole batch, as in one process. Each process then computes the same loss; the
    gather's backward sums the gradients of every process's copy into the local rows and DDP's averaging divides by
    the world size, which leaves exactly the single-process gradient. Unchanged outside training (no_grad) or in
    one process."""
    import torch.distributed as dist

    if not (torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return (z, *others)
    from torch.distributed.nn.functional import all_gather

    def plain(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    return (torch.cat(all_gather(z.contiguous())), *(plain(t) for t in others))


def combine(named: dict[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """The only place the weights are applied."""
    total = named["action"]
    if "phase" in named:
        total = total + cfg.phase_weight * named["phase"]
    if "direction" in named:
        total = total + cfg.direction_weight * named["direction"]
    if "aux_state" in named:
        total = total + cfg.aux_state_weight * named["aux_state"]
    return total


# ---------------------------------------------------------------- VITA-VLA
def alignment_loss(mapped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 1: mean Euclidean (not squared) distance between the mapped action-token states (B, A, d) and the
    expert's features (B, d), each token against the same target."""
    return (mapped.float() - target.float()[:, None]).norm(dim=-1).mean()


def arm_gripper_loss(pred_arm: torch.Tensor, target_arm: torch.Tensor, gripper_logit: torch.Tensor,
                     gripper_closed: torch.Tensor, pad: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Stage 2: smooth-L1 on the arm dims (B, K, D-1), normalized units, and binary cross-entropy of the gripper
    logit (B, K) against closed (B, K) bool; padded chunk steps (pad (B, K) True) do not count."""
    w = _kept(gripper_logit, pad)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(gripper_logit.float(), gripper_closed.float(),
                                                               reduction="none")
    return chunk_smooth_l1(pred_arm, target_arm, pad), (bce * w).sum() / w.sum().clamp_min(1.0)


def chunk_smooth_l1(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth-L1 of (B, K, D) chunks, normalized units, averaged over dims and the chunk steps pad (B, K) keeps."""
    w = _kept(pred[..., 0], pad)
    per_step = torch.nn.functional.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    return (per_step * w).sum() / w.sum().clamp_min(1.0)


def _kept(like: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """(B, K) 1.0 where a chunk step counts: not padding."""
    return torch.ones_like(like, dtype=torch.float32) if pad is None else (~pad.bool()).float()
