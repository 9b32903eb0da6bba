"""A VLM labeller over any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, hosted).

Per window: keyframes (one contact sheet or separate images, base64 JPEG) + a prompt asking for JSON
{"phase": <taxonomy label>, "direction": <short motion sentence>}. Replies are schema-checked; a malformed reply
is asked again, and after `retries` the window is marked invalid (phase -1, no cue): a bad VLM never crashes the
run. Answers, valid or not, are cached in SQLite keyed by (dataset, episode, window, model, prompt), so a rerun or
a resumed run asks nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = (
    "These are {n} frames, in time order, from a robot manipulation episode. The task is: \"{task}\".\n"
    "Answer with one JSON object and nothing else: {{\"phase\": <one of {labels}>, "
    "\"direction\": <a short phrase describing the gripper's motion over these frames, e.g. "
    "\"moving the gripper left and down toward the puck\" or \"closing the gripper\">}}."
)


@dataclass(frozen=True)
class VLMConfig:
    url: str  # base URL up to /v1, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str = ""
    keyframes: int = 4
    contact_sheet: bool = True  # one image with the keyframes side by side, or one image per keyframe
    image_size: int = 224  # side of each keyframe in the request
    concurrency: int = 4
    timeout_s: float = 60.0
    retries: int = 2  # extra asks after a malformed reply or a failed request
    backoff_s: float = 0.5
    max_direction_chars: int = 160


def parse_reply(content: str, labels: tuple[str, ...], max_chars: int) -> tuple[int, str] | None:
    """The model's text -> (phase index, direction) or None when it does not follow the schema."""
    m = re.search(r"\{.*\}", content, re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    phase, direction = obj.get("phase"), obj.get("direction")
    if not isinstance(phase, str) or phase.strip().lower() not in labels:
        return None
    if not isinstance(direction, str) or not direction.strip() or len(direction) > max_chars:
        return None
    return labels.index(phase.strip().lower()), " ".join(direction.strip().lower().split())


def _jpeg_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def keyframe_images(frames: np.ndarray, cfg: VLMConfig) -> list[np.ndarray]:
    """frames: (W, H, W, 3) uint8 of one window -> the images sent (a contact sheet or each keyframe)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, cfg.keyframes).round().astype(int))
    keys = [np.asarray(Image.fromarray(frames[i]).resize((cfg.image_size, cfg.image_size),
                                                         Image.BILINEAR)) for i in idx]
    return [np.concatenate(keys, axis=1)] if cfg.contact_sheet else keys


class VLMLabeller:
    def __init__(self, cfg: VLMConfig, cache_path: str | Path):
        self.cfg = cfg
        self.cache_path = Path(cache_path)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Shared by every worker process on this machine: wait for another's write instead of failing.
        self._db = sqlite3.connect(self.cache_path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, reply TEXT)")
        self._db.commit()
        self._lock = threading.Lock()
        self.requests = 0
        self.invalid = 0

    def _cached(self, key: str):
        with self._lock:
            row = self._db.execute("SELECT reply FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _store(self, key: str, value) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    def _post(self, body: dict) -> str:
        req = urllib.request.Request(
            self.cfg.url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {})},
        )
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
            reply = json.loads(resp.read())
        with self._lock:
            self.requests += 1
        return reply["choices"][0]["message"]["content"] or ""

    def _ask(self, prompt: str, images: list[np.ndarray], labels: tuple[str, ...]) -> tuple[int, str] | None:
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{_jpeg_b64(im)}"}} for im in images
        ]
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": content}], "temperature": 0.0,
                "max_tokens": 128}
        for attempt in range(self.cfg.retries + 1):
            try:
                parsed = parse_reply(self._post(body), labels, self.cfg.max_direction_chars)
            except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, ValueError):
                parsed = None
                time.sleep(self.cfg.backoff_s * 2**attempt)
            if parsed is not None:
                return parsed
        return None

    def label_episode(self, dataset_id: str, episode_index: int, task: str, frames: np.ndarray,
                      wins: np.ndarray, labels: tuple[str, ...]) -> list[tuple[int, str | None]]:
        """frames: (T, H, W, 3) uint8 of one camera; wins: (K, 2). Returns (phase index or -1, cue or None) per
        window."""
        prompt = PROMPT.format(n=self.cfg.keyframes, task=task, labels=", ".join(labels))

        def one(k: int) -> tuple[int, str | None]:
            s, e = int(wins[k, 0]), int(wins[k, 1])
            key = hashlib.sha256(json.dumps([dataset_id, episode_index, s, e, self.cfg.model, prompt,
                                             self.cfg.keyframes, self.cfg.contact_sheet,
                                             self.cfg.image_size]).encode()).hexdigest()
            hit = self._cached(key)
            if hit is None:
                parsed = self._ask(prompt, keyframe_images(frames[s:e], self.cfg), labels)
                hit = list(parsed) if parsed else [-1, None]
                self._store(key, hit)
            return int(hit[0]), hit[1]

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            out = list(pool.map(one, range(len(wins))))
        self.invalid += sum(p < 0 for p, _ in out)
        return out

    def close(self) -> None:
        self._db.close()
