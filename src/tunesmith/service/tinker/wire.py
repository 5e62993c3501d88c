"""The Tinker API's binary bodies: `forward_backward` requests arrive as protobuf, and its results
and sampling results go back as protobuf when the client asks (`Accept: application/x-protobuf`).

The schema below is declared here, message by message, with the field numbers the `tinker`
client's package writes and reads (its `tinker_public` proto, read from the client's source);
protobuf's runtime builds the classes. Only the messages and fields this server reads or writes
are declared: protobuf skips fields a message does not know.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tunesmith.errors import UserError

PACKAGE = "tinker_public"
F = descriptor_pb2.FieldDescriptorProto

DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32 = 1, 2, 3
NUMPY_OF = {DTYPE_FLOAT32: np.float32, DTYPE_INT64: np.int64, DTYPE_INT32: np.int32}
STOP, LENGTH = 0, 1

# message -> [(number, name, type, label, message type or None)]
_MESSAGES: dict[str, list[tuple[int, str, int, int, str | None]]] = {
    "SparseCsr": [
        (1, "values", F.TYPE_BYTES, 1, None),
        (2, "crow_indices", F.TYPE_BYTES, 1, None),
        (3, "col_indices", F.TYPE_BYTES, 1, None),
    ],
    "Tensor": [
        (1, "dense", F.TYPE_BYTES, 1, None),
        (2, "sparse_csr", F.TYPE_MESSAGE, 1, "SparseCsr"),
        (3, "dtype", F.TYPE_INT32, 1, None),
        (4, "shape", F.TYPE_INT64, 3, None),
    ],
    "EncodedTextChunk": [(1, "tokens", F.TYPE_BYTES, 1, None)],
    "ImageChunk": [(1, "data", F.TYPE_BYTES, 1, None), (2, "format", F.TYPE_STRING, 1, None)],
    "Chunk": [
        (1, "encoded_text", F.TYPE_MESSAGE, 1, "EncodedTextChunk"),
        (2, "image", F.TYPE_MESSAGE, 1, "ImageChunk"),
    ],
    "InputEntry": [(1, "key", F.TYPE_STRING, 1, None), (2, "value", F.TYPE_MESSAGE, 1, "Tensor")],
    "Datum": [(1, "model_input", F.TYPE_MESSAGE, 3, "Chunk"), (2, "loss_fn_inputs", F.TYPE_MESSAGE, 3, "InputEntry")],
    "NumberEntry": [(1, "key", F.TYPE_STRING, 1, None), (2, "value", F.TYPE_DOUBLE, 1, None)],
    "LossConfigValue": [(1, "number", F.TYPE_DOUBLE, 1, None), (2, "text", F.TYPE_STRING, 1, None)],
    "ConfigEntry": [(1, "key", F.TYPE_STRING, 1, None), (2, "value", F.TYPE_MESSAGE, 1, "LossConfigValue")],
    "ForwardBackwardRequest": [
        (1, "model_id", F.TYPE_STRING, 1, None),
        (2, "seq_id", F.TYPE_INT32, 1, None),
        (3, "data", F.TYPE_MESSAGE, 3, "Datum"),
        (4, "loss_fn", F.TYPE_STRING, 1, None),
        (5, "loss_fn_config", F.TYPE_MESSAGE, 3, "NumberEntry"),
        (6, "forward_only", F.TYPE_BOOL, 1, None),
        (7, "loss_fn_config_v2", F.TYPE_MESSAGE, 3, "ConfigEntry"),
    ],
    "BatchedTensor": [
        (1, "data", F.TYPE_BYTES, 1, None),
        (2, "offsets", F.TYPE_BYTES, 1, None),
        (3, "dtype", F.TYPE_INT32, 1, None),
        (4, "trailing_shape", F.TYPE_INT64, 3, None),
    ],
    "FieldEntry": [(1, "key", F.TYPE_STRING, 1, None), (2, "value", F.TYPE_MESSAGE, 1, "BatchedTensor")],
    "ArrayRecord": [
        (1, "type_tag", F.TYPE_STRING, 1, None),
        (2, "fields", F.TYPE_MESSAGE, 3, "FieldEntry"),
        (3, "num_datums", F.TYPE_INT64, 1, None),
    ],
    "ForwardBackwardOutput": [
        (1, "loss_fn_output_type", F.TYPE_STRING, 1, None),
        (2, "loss_fn_outputs", F.TYPE_MESSAGE, 3, "ArrayRecord"),
        (3, "metrics", F.TYPE_MESSAGE, 3, "NumberEntry"),
    ],
    "TopkLogprobs": [
        (1, "token_ids", F.TYPE_BYTES, 1, None),
        (2, "logprobs", F.TYPE_BYTES, 1, None),
        (3, "k", F.TYPE_UINT32, 1, None),
        (4, "length", F.TYPE_UINT32, 1, None),
    ],
    "SampledSequence": [
        (1, "stop_reason", F.TYPE_INT32, 1, None),
        (2, "tokens", F.TYPE_BYTES, 1, None),
        (3, "logprobs", F.TYPE_BYTES, 1, None),
        (4, "topk_sampled_logprobs", F.TYPE_MESSAGE, 1, "TopkLogprobs"),
    ],
    "SampleResponse": [
        (1, "sequences", F.TYPE_MESSAGE, 3, "SampledSequence"),
        (2, "prompt_logprobs", F.TYPE_BYTES, 1, None),
        (3, "topk_prompt_logprobs", F.TYPE_MESSAGE, 1, "TopkLogprobs"),
    ],
}
# (map<string, V> fields are repeated key/value entry messages on the wire: the *Entry messages)
# one-of groups the server asks which member is set
_ONEOFS = {"Chunk": ("chunk", ("encoded_text", "image")), "LossConfigValue": ("value", ("number", "text"))}
# optional fields whose presence the client checks (proto3 `optional`): each gets its own oneof
_PRESENCE = {
    ("SampledSequence", "logprobs"),
    ("SampledSequence", "topk_sampled_logprobs"),
    ("SampleResponse", "prompt_logprobs"),
    ("SampleResponse", "topk_prompt_logprobs"),
}


def _classes() -> dict:
    file = descriptor_pb2.FileDescriptorProto(name="tunesmith_tinker_wire.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        msg = file.message_type.add(name=name)
        for number, field, kind, label, type_name in fields:
            f = msg.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
            if name in _ONEOFS and field in _ONEOFS[name][1]:
                if not msg.oneof_decl:
                    msg.oneof_decl.add(name=_ONEOFS[name][0])
                f.oneof_index = 0
            elif (name, field) in _PRESENCE:
                f.proto3_optional = True
                f.oneof_index = len(msg.oneof_decl)
                msg.oneof_decl.add(name=f"_{field}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _MESSAGES
    }


M = _classes()


def _tensor(msg) -> np.ndarray:
    dtype = NUMPY_OF.get(msg.dtype)
    if dtype is None:
        raise UserError(f"a loss_fn_inputs tensor has dtype {msg.dtype}, not float32 or int64")
    shape = list(msg.shape)
    if msg.HasField("sparse_csr"):
        if len(shape) != 2:
            raise UserError("a sparse loss_fn_inputs tensor needs a 2-D shape")
        dense = np.zeros(shape, dtype=dtype)
        crow = np.frombuffer(msg.sparse_csr.crow_indices, dtype=np.int64)
        cols = np.frombuffer(msg.sparse_csr.col_indices, dtype=np.int64)
        values = np.frombuffer(msg.sparse_csr.values, dtype=dtype)
        for row in range(shape[0]):
            dense[row, cols[crow[row] : crow[row + 1]]] = values[crow[row] : crow[row + 1]]
        return dense
    flat = np.frombuffer(msg.dense, dtype=dtype)
    if shape and int(np.prod(shape)) != flat.size:
        raise UserError(f"a loss_fn_inputs tensor of shape {shape} carries {flat.size} values")
    return flat.reshape(shape) if shape else flat


def parse_forward_backward(body: bytes) -> dict:
    """A forward_backward request: model_id, seq_id, loss_fn, config, forward_only and its data as
    [(tokens, {name: array})]."""
    from google.protobuf.message import DecodeError

    msg = M["ForwardBackwardRequest"]()
    try:
        msg.ParseFromString(body)
    except DecodeError as e:
        raise UserError(f"forward_backward: not a protobuf ForwardBackwardRequest ({e})") from None
    config: dict = {e.key: e.value for e in msg.loss_fn_config}
    for entry in msg.loss_fn_config_v2:  # the newer map wins: it also carries text values
        config[entry.key] = entry.value.text if entry.value.WhichOneof("value") == "text" else entry.value.number
    data = []
    for i, datum in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in datum.model_input:
            if chunk.WhichOneof("chunk") != "encoded_text":
                raise UserError(
                    f"datum {i}: model_input has a {chunk.WhichOneof('chunk') or 'empty'} chunk; "
                    "this server reads text tokens only"
                )
            tokens += np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32).tolist()
        data.append((tokens, {e.key: _tensor(e.value) for e in datum.loss_fn_inputs}))
    return {
        "model_id": msg.model_id,
        "seq_id": msg.seq_id,
        "loss_fn": msg.loss_fn,
        "config": config,
        "forward_only": msg.forward_only,
        "data": data,
    }


def _batched(arrays: list[np.ndarray]) -> object:
    bt = M["BatchedTensor"]()
    flat = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
    bt.data = b"".join(a.tobytes() for a in flat)
    bt.offsets = np.cumsum([0, *(a.nbytes for a in flat)], dtype=np.int64).tobytes()
    bt.dtype = DTYPE_FLOAT32
    bt.trailing_shape.extend(list(arrays[0].shape[1:]) if arrays else [])
    return bt


def forward_backward_output(outputs: list[np.ndarray], metrics: dict[str, float]) -> bytes:
    """The result of forward_backward: each datum's `logprobs`, and the metrics."""
    msg = M["ForwardBackwardOutput"](loss_fn_output_type="ArrayRecord")
    if outputs:
        record = msg.loss_fn_outputs.add(num_datums=len(outputs))
        record.fields.add(key="logprobs").value.CopyFrom(_batched(outputs))
    for key, value in metrics.items():
        msg.metrics.add(key=key, value=float(value))
    return msg.SerializeToString()


def forward_backward_json(outputs: list[np.ndarray], metrics: dict[str, float]) -> dict:
    """The same result as JSON, for a client that does not ask for protobuf."""
    return {
        "loss_fn_output_type": "ArrayRecord",
        "metrics": metrics,
        "loss_fn_outputs": [
            {"logprobs": {"data": o.reshape(-1).tolist(), "dtype": "float32", "shape": list(o.shape)}} for o in outputs
        ],
    }


def _topk(rows: list[list[tuple[int, float]]], k: int):
    msg = M["TopkLogprobs"](k=k, length=len(rows))
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), -99999.0, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, (token, lp) in enumerate(row[:k]):
            ids[i, j], lps[i, j] = token, lp
    msg.token_ids, msg.logprobs = ids.tobytes(), lps.tobytes()
    return msg


def sample_response(
    sequences: list[dict], prompt_logprobs: list[float] | None = None, topk_prompt: tuple[list, int] | None = None
) -> bytes:
    """Sampled sequences ({tokens, logprobs, stop_reason, topk: (rows, k) or None}) and, when
    asked for, the prompt's log-probabilities (NaN where there is none: the first token)."""
    msg = M["SampleResponse"]()
    for s in sequences:
        seq = msg.sequences.add(
            stop_reason=LENGTH if s["stop_reason"] == "length" else STOP,
            tokens=np.asarray(s["tokens"], dtype=np.int32).tobytes(),
        )
        if s.get("logprobs") is not None:
            seq.logprobs = np.asarray(s["logprobs"], dtype=np.float32).tobytes()
        if s.get("topk") is not None:
            seq.topk_sampled_logprobs.CopyFrom(_topk(*s["topk"]))
    if prompt_logprobs is not None:
        msg.prompt_logprobs = np.asarray(
            [np.nan if v is None else v for v in prompt_logprobs], dtype=np.float32
        ).tobytes()
    if topk_prompt is not None:
        msg.topk_prompt_logprobs.CopyFrom(_topk(*topk_prompt))
    return msg.SerializeToString()
