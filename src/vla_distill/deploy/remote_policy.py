"""`openpi://HOST:PORT` as the control loop's policy: the robot-side client of a policy served elsewhere (our
`serve`, or any server of openpi's websocket protocol that describes its observation), behind the Policy interface.

The metadata frame's observation_spec says what to send; its keys may be openpi's slash form, matched to the robot's
dotted keys, and `obs_map` renames the rest ({server key: robot key}, e.g. "observation/image":
"observation.images.corner2"). A reply that is an error frame, a dropped connection or a timeout raises
PolicyUnavailable after one reconnect: the loop holds the robot for that tick and counts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vla_distill.data.openpi_client import OpenPIClient, ServerError, ServerUnreachable
from vla_distill.errors import ConfigError
from vla_distill.models.base import Policy
from vla_distill.types import TASK


class PolicyUnavailable(RuntimeError):
    """The remote policy gave no action this time (error frame, lost connection, timeout)."""


@dataclass(frozen=True)
class ServedConfig:
    """What the server's metadata says of the policy it serves (the Policy interface's config)."""

    uri: str
    horizon: int
    action_dim: int
    tasks: tuple[str, ...] = ()


class RemotePolicy(Policy):
    name = "remote"

    def __init__(self, host: str, port: int, timeout_s: float = 10.0, obs_map: dict[str, str] | None = None):
        super().__init__(None)  # the config comes from the server's metadata
        self.client = OpenPIClient(host, port, timeout_s)
        try:
            meta = self.client.connect()
        except (ServerError, ServerUnreachable) as e:
            raise ConfigError(str(e), field="policy") from None
        spec = meta.get("observation_spec")
        if not isinstance(spec, dict) or "action_horizon" not in meta or "action_dim" not in meta:
            raise ConfigError(f"{self.client.uri}: its metadata does not describe the observation and actions "
                              "(observation_spec, action_horizon, action_dim); serve the policy with "
                              "`vla-distill serve`", field="policy")
        self.config = ServedConfig(self.client.uri, int(meta["action_horizon"]), int(meta["action_dim"]),
                                   tuple(map(str, meta.get("instructions", ()))))
        obs_map = obs_map or {}
        self.wire = {obs_map.get(k, k.replace("/", ".")): k for k in spec}  # robot key -> server's
        self.spec = {ours: {"shape": list(spec[theirs]["shape"]), "dtype": str(spec[theirs]["dtype"])}
                     for ours, theirs in self.wire.items() if str(spec[theirs]["dtype"]) != "str"}
        self.prompt_key = next((k for k in spec if k in ("prompt", TASK)), "prompt")
        self.metadata = meta

    @property
    def input_keys(self) -> tuple[str, ...]:
        return tuple(self.spec)

    @property
    def observation_spec(self) -> dict[str, dict]:
        return {**self.spec, TASK: {"shape": [], "dtype": "str"}}

    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        """A batch of one (observation_to_batch) -> (1, K, D) actions from the server."""
        request = {self.prompt_key: str(batch[TASK][0])}
        for key in self.input_keys:
            x = batch[key][0]
            if self.spec[key]["dtype"] == "uint8":  # (3, H, W) in [0, 1] -> the (H, W, 3) pixels the wire carries
                x = (x.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8)
            request[self.wire[key]] = np.ascontiguousarray(x.cpu().numpy())
        return torch.from_numpy(np.array(self._ask(request), np.float32))[None]  # decoded arrays are read-only

    def _ask(self, request: dict) -> np.ndarray:
        """The reply's (K, D) actions, reconnecting once after a lost connection."""
        for attempt in (0, 1):
            try:
                reply = self.client.infer(request)
                break
            except ServerUnreachable as e:
                if attempt:
                    raise PolicyUnavailable(str(e)) from None
            except ServerError as e:
                raise PolicyUnavailable(str(e)) from None
        actions = reply.get("actions")
        if actions is None or np.shape(actions) != (self.horizon, self.action_dim):
            raise PolicyUnavailable(f"{self.client.uri}: reply without actions of shape "
                                    f"{[self.horizon, self.action_dim]}")
        return actions

    def close(self) -> None:
        self.client.close()
