"""Loopback servers the tests run as separate processes: each speaks a real protocol over a real socket.

  python tests/servers.py openpi  POLICY_DIR   openpi websocket server (vla_distill.deploy.openpi_server)
  python tests/servers.py openvla POLICY_DIR   OpenVLA deploy.py's REST API: POST /act, json-numpy
  python tests/servers.py vlm     MODE         an OpenAI-compatible chat-completions endpoint (a VLM stand-in)

Each prints "PORT <n>" on stdout once listening, and logs one line per request to $SERVER_LOG if set. The openpi
server answers after $DELAY_S seconds if set, and fails about 30% of requests if $FAIL_EVERY is set.
The policy servers serve a small torch policy (a state MLP checkpoint); the VLM stand-in answers from the
prompt and the number of images, in MODE "good", "flaky" (the first ask of each request malformed) or "garbage".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

_lock = threading.Lock()


def log(line: str) -> None:
    path = os.environ.get("SERVER_LOG")
    if path:
        with _lock, open(path, "a") as f:
            f.write(line + "\n")


def send_json(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve_http(handler: type[BaseHTTPRequestHandler]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def serve_openpi(policy_dir: str) -> None:
    from vla_distill.deploy.openpi_server import make_server, metadata_for, policy_infer_fn
    from vla_distill.models.checkpoint import load_pretrained

    policy = load_pretrained(policy_dir)
    infer = policy_infer_fn(policy)

    def logged(obs):
        log("infer " + ",".join(sorted(obs)) + " " + ";".join(f"{k}:{getattr(v, 'shape', '')}" for k,
                                                              v in sorted(obs.items())))
        if os.environ.get("FAIL_EVERY") and np.random.rand() < 0.3:
            raise RuntimeError("injected failure")
        time.sleep(float(os.environ.get("DELAY_S", "0")))  # a slow teacher, as a 7B VLA is
        return infer(obs)

    server = make_server(logged, metadata_for(policy, "torch"), "127.0.0.1", 0)
    print(f"PORT {server.socket.getsockname()[1]}", flush=True)
    server.serve_forever()


def serve_openvla(policy_dir: str) -> None:
    import json_numpy
    import torch

    from vla_distill.models.checkpoint import load_pretrained

    policy = load_pretrained(policy_dir)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            payload = json_numpy.loads(body)
            if "encoded" in payload:
                payload = json_numpy.loads(payload["encoded"])
            image, instruction = payload["image"], payload["instruction"]
            log(f"act image={image.shape}{image.dtype} instruction={instruction!r} "
                f"unnorm_key={payload.get('unnorm_key')}")
            # A 7-d action as OpenVLA returns, computed by the policy from the image statistics.
            feats = torch.as_tensor(np.tile(image.reshape(-1, 3).mean(0) / 255.0, 2)[:4], dtype=torch.float32)[None]
            with torch.no_grad():
                a = policy.predict_action_chunk({"observation.state": feats})[0, 0].numpy()
            action = np.concatenate([a, np.zeros(3, np.float32)])
            out = json_numpy.dumps(action).encode()
            send_json(self, out)

    serve_http(Handler)


def serve_vlm(mode: str) -> None:
    counter = {"n": 0}
    seen: set[int] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            text = next(c["text"] for c in content if c["type"] == "text")
            images = [c for c in content if c["type"] == "image_url"]
            assert all(c["image_url"]["url"].startswith("data:image/jpeg;base64,") for c in images)
            with _lock:
                counter["n"] += 1
                n = counter["n"]
                first_ask = hash(json.dumps(content)) not in seen
                seen.add(hash(json.dumps(content)))
            log(f"chat model={body['model']} images={len(images)}")
            labels = text.split("one of ")[1].split(">")[0].split(", ")
            if mode == "garbage" or (mode == "flaky" and first_ask):
                answer = "I think the robot is doing something interesting."
            else:
                # Like a VLM at temperature 0: the same request gets the same answer, whoever asks and when.
                phase = labels[int(hashlib.sha256(json.dumps(content).encode()).hexdigest(), 16) % len(labels)]
                answer = json.dumps({"phase": phase, "direction": "moving the gripper left"})
            out = json.dumps({"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                           "finish_reason": "stop"}]}).encode()
            send_json(self, out)

    serve_http(Handler)


if __name__ == "__main__":
    {"openpi": serve_openpi, "openvla": serve_openvla, "vlm": serve_vlm}[sys.argv[1]](sys.argv[2])
