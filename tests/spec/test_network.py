"""The network definition: derivation from ModelConfig, JSON round trip, and validation errors."""

import dataclasses
import json

import pytest

from spec.canonical import canonical_shapes
from spec.network import (
    KERNEL_NAMES,
    KERNEL_SINK_TOKENS,
    SCHEMA_VERSION,
    MoE,
    NetworkError,
    formats_allowed,
    load_network,
    network_from_config,
    network_from_dict,
    network_from_json,
    resolve_quant,
)
from spec.registry import MODELS, get_model
from spec.registry.quant_formats import QUANT_FORMATS


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("quant", list(QUANT_FORMATS))
def test_round_trip_every_model_and_format(model, quant):
    net = network_from_config(get_model(model), quant)
    text = net.to_json()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert network_from_json(text) == net


def test_released_20b_structure():
    c = get_model("20b")
    net = network_from_config(c, "mxfp4")
    assert net.num_layers == 24
    for layer in net.layers:
        a = layer.attention
        if layer.index % 2 == 0:   # even layers slide (window 128), odd layers are full
            assert (a.kind, a.window, a.kv_slots) == ("sliding", 128, 128)
        else:
            assert (a.kind, a.window, a.kv_slots) == ("full", None, None)
        assert a.learned_sinks and a.sink_tokens == 0
        assert a.rope.kind == "yarn" and a.rope.factor == 32.0 and not a.rope.truncate
        assert abs(a.rope.concentration - (0.1 * __import__("math").log(32) + 1)) < 1e-12
        m = layer.mlp
        assert isinstance(m, MoE) and (m.num_experts, m.top_k) == (32, 4)
        assert m.router.bias is not None and m.swiglu_alpha == 1.702 and m.swiglu_limit == 7.0
        assert {m.gate.quant, m.up.quant, m.down.quant} == {"mxfp4"} and m.router.quant == "bf16"
        assert a.qkv.quant == "bf16"
        assert "moe_mxfp4_w4a16" in m.kernels
    assert net.kernels == ("attention_sinks", "sliding_window", "moe_mxfp4_w4a16")
    assert net.eos_token_ids == (200002, 200012)


def test_every_named_tensor_is_canonical():
    for model in MODELS:
        c = get_model(model)
        shapes = canonical_shapes(c)
        net = network_from_config(c)
        names = _tensor_names(net)
        assert names == set(shapes), model


def _tensor_names(net):
    names = set()

    def walk(obj, field_name=""):
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name), f.name)
        elif isinstance(obj, tuple):
            for v in obj:
                walk(v)
        elif field_name in ("weight", "bias", "sinks") and isinstance(obj, str):
            names.add(obj)
    walk(net)
    return names


def test_plugin_names_are_capability_kernels():
    from spec.capabilities import KERNELS
    # every kernel but the StreamingLLM policy (no serving stack offers it) is in the per-SM table
    assert set(KERNEL_NAMES) - {KERNEL_SINK_TOKENS} <= set(KERNELS)
    for fmt in QUANT_FORMATS.values():
        assert set(fmt.kernels) <= set(KERNEL_NAMES)


def test_quant_groups_follow_the_registry():
    assert resolve_quant("mxfp4")["experts"] == "mxfp4" and resolve_quant("mxfp4")["attention"] == "bf16"
    # nvfp4 is experts-only: TensorRT-LLM keeps gpt-oss attention bf16 in NVFP4 checkpoints
    assert resolve_quant("nvfp4")["experts"] == "nvfp4" and resolve_quant("nvfp4")["attention"] == "bf16"
    assert resolve_quant("nvfp4")["router"] == "bf16"
    assert formats_allowed("router") == ("bf16",)
    with pytest.raises(NetworkError, match=r"quant\['router'\]: format 'nvfp4' is not allowed"):
        resolve_quant({"router": "nvfp4"})
    with pytest.raises(NetworkError, match="unknown format 'int3'"):
        resolve_quant("int3")
    with pytest.raises(NetworkError, match="unknown module group"):
        resolve_quant({"norms": "bf16"})


def test_sink_tokens_declared_on_sliding_layers_only():
    net = network_from_config(get_model("tiny").with_overrides(sink_tokens=4))
    for layer in net.layers:
        a = layer.attention
        if a.kind == "sliding":
            assert a.sink_tokens == 4 and a.kv_slots == 16 + 4 and KERNEL_SINK_TOKENS in a.kernels
        else:
            assert a.sink_tokens == 0


def _edit(d, path, value):
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize("path,value,message", [
    (("schema_version",), 99, "schema_version: 99 is not supported"),
    (("schema_version",), 1, r'schema_version 1 is no longer read .* names kernels "plugins"; rebuild the engine'),
    (("layers", 0, "attention", "kind"), "local", r"layers\[0\].attention.kind: 'local' is not an attention kind"),
    (("layers", 0, "attention", "window"), 0, r"layers\[0\].attention.window: 0 must be a positive integer"),
    (("layers", 1, "attention", "window"), 8, r"layers\[1\].attention.window: 8 must be null for full attention"),
    (("layers", 0, "attention", "num_kv_heads"), 3, r"num_kv_heads: 3 must divide num_q_heads 4"),
    (("layers", 0, "attention", "sink_tokens"), -1, r"sink_tokens: -1 must be an integer >= 0"),
    (("layers", 0, "attention", "sinks"), None, r"attention.sinks: None must name the sink tensor"),
    (("layers", 0, "attention", "qkv", "quant"), "int3", r"qkv.quant: 'int3' is not a known quant format"),
    (("layers", 0, "attention", "qkv", "out_features"), 127, r"qkv.out_features: 127 must be 256"),
    (("layers", 0, "attention", "rope", "beta_fast"), 0.5, r"rope.beta_fast: 0.5 must exceed beta_slow"),
    (("layers", 0, "mlp", "top_k"), 9, r"layers\[0\].mlp.top_k: 9 must be <= num_experts 8"),
    (("layers", 0, "mlp", "router", "quant"), "mxfp4", r"mlp.router.quant: 'mxfp4' is not allowed here"),
    (("layers", 0, "mlp", "kind"), "sparse", r"layers\[0\].mlp.kind: 'sparse' must be one of"),
    (("layers", 0, "mlp", "swiglu_limit"), -7.0, r"swiglu_limit: -7.0 must be > 0 or null"),
    (("layers", 2, "index"), 5, r"layers\[2\].index: 5 must be 2"),
    (("layers", 0, "attn_norm", "size"), 32, r"layers\[0\].attn_norm.size: 32 must equal hidden_size 128"),
    (("layers", 0, "attention", "head_dim"), "16", r"attention.head_dim: '16' must be an integer"),
    (("layers", 0, "attention", "learned_sinks"), 1, r"learned_sinks: 1 must be true or false"),
    (("layers", 0, "attention", "colour"), "red", r"network.layers\[0\].attention: unknown field\(s\) \['colour'\]"),
    (("layers", 0, "attention", "qkv"), _DELETE, r"network.layers\[0\].attention.qkv: missing"),
    (("dtype",), "float8", r"dtype: 'float8' is not a known dtype"),
])
def test_validation_names_field_and_value(path, value, message):
    d = network_from_config(get_model("tiny")).to_dict()
    _edit(d, path, value)
    with pytest.raises(NetworkError, match=message):
        network_from_dict(d)


def test_not_json():
    with pytest.raises(NetworkError, match="not valid JSON"):
        network_from_json("{nope")


def test_save_load(tmp_path):
    net = network_from_config(get_model("20b-dense"), "nvfp4")
    net.save(tmp_path / "network.json")
    assert load_network(tmp_path / "network.json") == net
