"""Run by .venv-openpi's Python (openpi-client 0.1.2, numpy < 2): openpi's own WebsocketClientPolicy against our
server, unchanged. Prints one JSON line: the metadata it received and the actions' largest error.

  python openpi_client_side.py HOST PORT REFERENCE_NPZ
"""

import json
import sys

import numpy as np
from openpi_client import websocket_client_policy

host, port, ref = sys.argv[1], int(sys.argv[2]), sys.argv[3]
z = np.load(ref)
policy = websocket_client_policy.WebsocketClientPolicy(host=host, port=port)
meta = policy.get_server_metadata()
errors = []
for i in range(len(z["tasks"])):
    # openpi's LIBERO/DROID examples send slash keys and "prompt"
    obs = {k[4:].replace(".", "/"): z[k][i] for k in z.files if k.startswith("obs/")}
    obs["prompt"] = str(z["tasks"][i])
    out = policy.infer(obs)
    errors.append(float(np.abs(out["actions"] - z["actions"][i]).max()))
try:
    policy.infer({"prompt": "no observation"})
    bad = "no error"
except RuntimeError as e:
    bad = str(e)
print(json.dumps({"spec": meta["observation_spec"], "action_shape": meta["action_shape"], "max_error": max(errors),
                  "n": len(errors), "bad_request": bad, "numpy": np.__version__}))
