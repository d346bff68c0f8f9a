"""The plan's profile limits for the full-size 20b (builder.tensorrt.engine_dir.limits_of), against arithmetic
from the model's released config written out here: the decode batch is capped so the graph's bf16 caches at
full capacity fit the fit plan's KV budget (the fit plan counts fp8 KV on Blackwell), and the prefill chunk so
the decomposed attention's fp32 scores and probabilities fit the runtime reserve."""

from builder.engine.build import make_plan, resolve, BuildRequest
from builder.tensorrt.engine_dir import graph_kv_bytes_per_sequence, limits_of
from spec.network import network_from_config
from spec.registry.models import get_model

# gpt-oss-20b: 24 layers alternating sliding (window 128) / full, 8 kv heads of 64, 64 q heads.
FULL_LAYERS, SLIDING_LAYERS, KV_HEADS, HEAD_DIM, Q_HEADS, WINDOW = 12, 12, 8, 64, 64, 128


def _limits(gpu: str):
    req = BuildRequest(model="20b", gpu=gpu)
    p = make_plan(req, get_model("20b"), resolve(req))
    net = network_from_config(get_model("20b"), "nvfp4")
    return p, net, limits_of(p.max_batch_size, p.max_seq_len, net, p.runtime_reserve_bytes,
                             p.kv_budget_bytes_per_gpu, dtype_bytes=2)


def test_graph_kv_bytes_of_20b():
    net = network_from_config(get_model("20b"), "nvfp4")
    per_row = 2 * KV_HEADS * HEAD_DIM * 2                                  # K and V, bf16
    want = FULL_LAYERS * per_row * (131072 + 32) + SLIDING_LAYERS * per_row * (WINDOW + 1)
    assert graph_kv_bytes_per_sequence(net, 131072, 32, 2) == want


def test_rtx_pro_6000_keeps_batch_16_and_a_bounded_prefill_chunk():
    p, net, lim = _limits("rtx-pro-6000")
    t = lim.max_tokens
    assert 8 * Q_HEADS * t * (131072 + t) <= p.runtime_reserve_bytes < 8 * Q_HEADS * (2 * t) * (131072 + 2 * t)
    assert lim.max_batch_size == 16 == p.max_batch_size                   # 16 x 3.2 GB fits 70.9 GB
    assert 16 * graph_kv_bytes_per_sequence(net, 131072, t, 2) <= p.kv_budget_bytes_per_gpu


def test_rtx_5090_decode_batch_is_what_its_bf16_caches_fit():
    p, net, lim = _limits("rtx-5090")
    per_seq = graph_kv_bytes_per_sequence(net, 131072, lim.max_tokens, 2)
    assert p.max_batch_size > lim.max_batch_size >= 1                     # the fit plan's fp8 batch does not fit
    assert lim.max_batch_size * per_seq <= p.kv_budget_bytes_per_gpu < (lim.max_batch_size + 1) * per_seq
    # negative control: without the budget the plan would admit the fit plan's batch, whose caches do not fit
    free = limits_of(p.max_batch_size, p.max_seq_len, net, p.runtime_reserve_bytes)
    assert free.max_batch_size * per_seq > p.kv_budget_bytes_per_gpu
