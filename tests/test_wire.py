"""The openpi wire format from a hostile peer: the msgpack-numpy decoder and the policy server, fuzzed with generated
frames. Every frame either decodes to plain numeric arrays or is a WireError; the server answers each with actions or
a one-line error frame, and still answers a good request after it. `make test` runs a bounded number of frames;
`make test-slow` many more."""

from __future__ import annotations

import json
import math
import os
import urllib.request

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import bundle_reference, bundle_request
from vla_distill.data.msgpack_numpy import WIRE_KINDS, WireError, packb, unpackb

# Frames per property: seconds in the default suite, minutes under `make test-slow` (VLA_DISTILL_FUZZ_FRAMES overrides).
DEFAULT_FRAMES, SLOW_FRAMES = 1000, 30000
CRAFTED = {"prompt": {b"__ndarray__": True, b"data": b"A" * 8, b"dtype": "|O", b"shape": [1]}}  # the crash

# dtype fields a peer may send: the dangerous kinds, the allowed ones, and junk of other types
DTYPES = st.one_of(
    st.sampled_from(["|O", "O", "|V8", "V4", "<U2", "|S8", "f4,i4", "(2,)f4", "M8[s]", "<m8[ns]", "<c8", "<c16",
                     "<f4", "<f8", "<f2", ">f4", "|u1", "|b1", "?", "<i8", "<u2", "i1", "object", "str"]),
    st.text(max_size=10), st.binary(max_size=6), st.integers(-5, 300), st.none(),
    st.lists(st.lists(st.sampled_from(["a", "O", "<f4", "|O"]), min_size=2, max_size=2), max_size=2),
)
SHAPES = st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), st.lists(st.integers(0, 4), max_size=3),
                   st.integers(-1, 8), st.text(max_size=4), st.lists(st.floats(allow_nan=True), max_size=2),
                   st.lists(st.booleans(), max_size=2))
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20),
                   st.binary(max_size=32))


@st.composite
def consistent_arrays(draw):
    """ndarray dicts whose data length fits their shape: the decoder's accepting path."""
    dtype = np.dtype(draw(st.sampled_from(["<f4", "<f8", ">f4", "|u1", "|b1", "<i8", "|O", "<U1", "|V2", "<c8"])))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    data = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype.str, b"shape": shape}


ARRAYS = st.one_of(
    consistent_arrays(),
    st.fixed_dictionaries({b"__ndarray__": st.just(True), b"data": st.one_of(st.binary(max_size=64), LEAVES),
                           b"dtype": DTYPES, b"shape": SHAPES}),
    st.fixed_dictionaries({b"__npgeneric__": st.just(True), b"data": LEAVES, b"dtype": DTYPES}),
)
VALUES = st.recursive(st.one_of(LEAVES, ARRAYS), lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), children, max_size=4)), max_leaves=12)


def _frames(good: dict, keys: list[str]):
    """Whole frames: raw bytes, text, arbitrary msgpack, a good request with one field replaced or removed, and a
    good request's bytes cut short or with one byte changed."""
    packed = packb(good)
    replaced = st.builds(lambda k, v: packb({**good, k: v}), st.sampled_from(keys + ["prompt", "task", "extra"]),
                         VALUES)
    removed = st.sampled_from(keys + ["prompt"]).map(lambda k: packb({x: v for x, v in good.items() if x != k}))
    cut = st.integers(0, len(packed) - 1).map(lambda n: packed[:n])
    flipped = st.tuples(st.integers(0, len(packed) - 1), st.integers(0, 255)).map(
        lambda t: packed[: t[0]] + bytes([t[1]]) + packed[t[0] + 1:])
    return st.one_of(st.binary(max_size=256), st.text(max_size=40), VALUES.map(msgpack.packb), replaced, removed, cut,
                     flipped)


def _n_frames(slow: bool) -> int:
    return int(os.environ.get("VLA_DISTILL_FUZZ_FRAMES", SLOW_FRAMES if slow else DEFAULT_FRAMES))


def _decoded_is_plain(obj) -> None:
    """Every array the decoder returned is numeric or bool, and printing it follows no pointer."""
    if isinstance(obj, (np.ndarray, np.generic)):
        assert obj.dtype.kind in WIRE_KINDS and obj.dtype.fields is None, obj.dtype
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _decoded_is_plain(k)
            _decoded_is_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _decoded_is_plain(v)
    repr(obj)


def test_the_crafted_object_array_is_refused_naming_the_dtype():
    with pytest.raises(WireError, match=r"dtype: '\|O' is not allowed"):
        unpackb(msgpack.packb(CRAFTED))
    with pytest.raises(WireError, match="unsupported dtype"):
        packb({"x": np.array(["a"], object)})


@pytest.mark.parametrize("raw, message", [(b"\xc1", "FormatError: not a msgpack frame"),
                                          (b"\x91" * 5000, "StackError: nested too deeply"),
                                          (b"\x92\x01", "incomplete input")])
def test_msgpack_errors_say_what_is_wrong(raw, message):
    with pytest.raises(WireError, match=message):
        unpackb(raw)


def test_arrays_and_scalars_round_trip():
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 4), np.uint8), "c": np.float64(2.5),
           "d": np.array([True, False]), "e": [np.int16(-3), "text", b"raw"]}
    out = unpackb(packb(obj))
    assert all(np.array_equal(out[k], obj[k]) and out[k].dtype == obj[k].dtype for k in "abd")
    assert out["c"] == 2.5 and out["e"][0] == -3 and out["e"][0].dtype == np.int16 and out["e"][1:] == ["text", b"raw"]


def _fuzz_decoder(slow: bool):
    @settings(max_examples=_n_frames(slow), deadline=None, database=None, derandomize=not slow,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=256), VALUES.map(msgpack.packb)))
    @example(msgpack.packb(CRAFTED))
    @example(msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [  # found by the long
        4, {b"__ndarray__": True, b"data": bytes(8), b"dtype": "<f4", b"shape": [2, 1]}]}}))  # run: quoted on 3 lines
    def decode(frame: bytes):
        try:
            obj = unpackb(frame)
        except WireError as e:
            assert str(e).split(": ", 1)[-1].strip() and "\n" not in str(e), e  # a reason, on one line
            return
        _decoded_is_plain(obj)

    decode()


def test_wire_decoder_fuzz():
    _fuzz_decoder(slow=False)


@pytest.mark.slow
def test_wire_decoder_fuzz_long():
    _fuzz_decoder(slow=True)


def _fuzz_server(served: str, onnx_bundle, slow: bool) -> int:
    """Sends generated frames on one connection; after each, the reply is actions or a one-line error frame, and a
    good request on the same connection still gets the right actions. Returns the frames sent."""
    from websockets.sync.client import connect

    frames, tasks, expected = bundle_reference(onnx_bundle)
    good = bundle_request(frames, 0, tasks[0])
    sent = [0]
    with connect(f"ws://{served}", compression=None, max_size=None) as ws:
        ws.recv()  # the metadata frame: the server is warm

        @settings(max_examples=_n_frames(slow), deadline=None, database=None, derandomize=not slow,
                  suppress_health_check=list(HealthCheck))
        @given(_frames(good, sorted(frames)))
        @example(msgpack.packb({**{k: {b"__ndarray__": True, b"data": v.tobytes(), b"dtype": v.dtype.str,
                                       b"shape": list(v.shape)} for k, v in good.items() if k != "prompt"},
                                **CRAFTED}))
        def frame_then_good(frame):
            ws.send(frame)
            reply = ws.recv(timeout=30)
            if isinstance(reply, str):
                assert reply.startswith("bad request: ") and "\n" not in reply and "Traceback" not in reply, reply
            else:
                assert unpackb(reply)["actions"].shape == expected[0].shape
            ws.send(packb(good))
            assert np.allclose(unpackb(ws.recv(timeout=30))["actions"], expected[0], atol=1e-5)
            sent[0] += 1

        frame_then_good()
    return sent[0]


def _health(host_port: str) -> dict:
    return json.loads(urllib.request.urlopen(f"http://{host_port}/healthz", timeout=10).read())


def test_the_prompt_must_be_a_string_and_the_crafted_frame_is_an_error_frame(served, onnx_bundle):
    """The policy reads an instruction: no default prompt; a number, bytes or an array there is named; the frame that
    crashed the server is refused while it is decoded."""
    from websockets.sync.client import connect

    frames, tasks, expected = bundle_reference(onnx_bundle)
    good = bundle_request(frames, 0, tasks[0])
    arrays = {k: {b"__ndarray__": True, b"data": v.tobytes(), b"dtype": v.dtype.str, b"shape": list(v.shape)}
              for k, v in good.items() if k != "prompt"}
    cases = {
        "missing": (packb({k: v for k, v in good.items() if k != "prompt"}), "prompt: missing"),
        "int": (packb({**good, "prompt": 5}), "prompt: expected a string, got int"),
        "bytes": (packb({**good, "prompt": tasks[0].encode()}), "prompt: expected a string, got bytes"),
        "array": (packb({**good, "prompt": np.zeros(3, np.float32)}), "prompt: expected a string, got ndarray"),
        "object array": (msgpack.packb({**arrays, **CRAFTED}), "dtype: '|O' is not allowed"),
        "task as well": (packb({**{k: v for k, v in good.items() if k != "prompt"}, "task": 1.5}),
                         "task: expected a string, got float"),
    }
    with connect(f"ws://{served}", compression=None, max_size=None) as ws:
        ws.recv()
        for name, (frame, message) in cases.items():
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("bad request: ") and message in reply, (name, reply)
        ws.send(packb({**{k: v for k, v in good.items() if k != "prompt"}, "task": tasks[0]}))  # "task" is read too
        assert np.allclose(unpackb(ws.recv(timeout=30))["actions"], expected[0], atol=1e-5)


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=[pytest.mark.slow, pytest.mark.timeout(3600)])],
                         ids=["bounded", "long"])
def test_server_fuzz_every_frame_is_answered_and_the_server_stays_healthy(served_process, onnx_bundle, slow):
    """`serve` as a separate process (batching up to 4: a lone client's requests do not wait for a batch to fill)."""
    proc, host_port = served_process
    sent = _fuzz_server(host_port, onnx_bundle, slow)
    health = _health(host_port)
    assert proc.poll() is None and health["ready"] and sent >= _n_frames(slow)
    assert health["requests"] + health["errors"] >= 2 * sent
