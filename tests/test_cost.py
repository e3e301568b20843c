"""agenttune.cluster.cost: parameter counts, FLOPs, time/MFU, ZeRO-3 memory, preflight and the CLI.

Every expected number here is worked out by hand in the comments, not taken from the code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agenttune.cluster.cost.devices import GPUS, GiB, get_gpu
from agenttune.cluster.cost.fit import Plan, check, preflight
from agenttune.cluster.cost.flops import (estimate_time, implied_mfu, mean_keys_per_token, read_measured_mfu,
                                          training_flops)
from agenttune.cluster.cost.memory import estimate_memory_zero3, zero3_model_states_mem
from agenttune.cluster.cost.seed import seed_table
from agenttune.cluster.cost.shapes import PRESETS, ModelShape, load_shape

REPO = Path(__file__).resolve().parents[1]

SMOLLM2_CONFIG = {  # HuggingFaceTB/SmolLM2-135M config.json, the keys that matter
    "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
}
LLAMA2_7B_CONFIG = {
    "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
}
QWEN2_72B_CONFIG = {
    "model_type": "qwen2", "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 29568,
    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
}

# A toy decoder small enough to count on paper:
# head_dim 2, q_dim 4, kv_dim 2; attention 4·4 + 2·(4·2) + 4·4 = 48; MLP 3·4·8 = 96; norms 2·4 = 8
# → 152 per layer; embeddings 10·4 = 40; final norm 4; tied → 40 + 152 + 4 = 196 parameters.
TOY = ModelShape("toy", layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tie_embeddings=True)
A100 = GPUS["a100-80g"]


# --------------------------------------------------------------------------- parameter counts

def test_smollm2_parameter_count():
    # per layer: q 576² + k,v 2·576·192 + o 576² = 884,736; MLP 3·576·1536 = 2,654,208; norms 1,152
    # 30 · 3,540,096 = 106,202,880; + embeddings 49152·576 = 28,311,552 + final norm 576 (tied: no lm_head)
    assert ModelShape.from_hf_config(SMOLLM2_CONFIG).params == 134_515_008
    assert PRESETS["smollm2-135m"].params == 134_515_008


def test_llama2_7b_parameter_count():
    # per layer: 4·4096² + 3·4096·11008 + 2·4096 = 202,383,360; ·32 = 6,476,267,520
    # + 2 · 32000·4096 (embeddings, lm_head) = 262,144,000 + final norm 4,096
    assert ModelShape.from_hf_config(LLAMA2_7B_CONFIG).params == 6_738_415_616
    assert PRESETS["llama2-7b"].params == 6_738_415_616


def test_qwen_presets_match_their_configs_and_published_sizes():
    # Qwen2-72B: per layer 2·8192² + 2·8192·1024 + qkv bias 8192+2·1024 + 3·8192·29568 + 2·8192 = 877,684,736
    # · 80 = 70,214,778,880; + 2 · 152064·8192 = 2,491,416,576; + 8,192 → 72,706,203,648 ("72.7B")
    assert ModelShape.from_hf_config(QWEN2_72B_CONFIG).params == 72_706_203_648
    assert PRESETS["qwen2-72b"].params == 72_706_203_648
    # Qwen1.5-14B: per layer 4·5120² + 3·5120 + 3·5120·13696 + 2·5120 = 315,253,760; ·40 + 2·152064·5120 + 5120
    assert PRESETS["qwen1.5-14b"].params == 14_167_290_880
    # Qwen2.5-14B: per layer 2·5120² + 2·5120·1024 + 7,168 bias + 3·5120·13824 + 2·5120 = 275,268,608
    # · 48 = 13,212,893,184; + 2·152064·5120 = 1,557,135,360; + 5,120
    assert PRESETS["qwen2.5-14b"].params == 14_770_033_664
    assert load_shape("qwen2-14b") is PRESETS["qwen1.5-14b"]  # no Qwen2-14B exists; see docs/cost.md


def test_toy_and_bias_rules():
    assert TOY.params == 196
    assert TOY.compute_params == 196  # tied: the one table is the lm_head
    untied = ModelShape("u", 1, 4, 8, 2, 1, 10)
    assert untied.params == 236 and untied.compute_params == 196  # input embedding is a lookup
    # Llama attention_bias biases q, k, v and o: 4 + 2 + 2 + 4 = 12 more
    cfg = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 4, "intermediate_size": 8,
           "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "tie_word_embeddings": True}
    assert ModelShape.from_hf_config({**cfg, "attention_bias": True}).params == 196 + 12
    # Qwen2 biases q, k, v only, with no attention_bias key: 4 + 2 + 2
    assert ModelShape.from_hf_config({**cfg, "model_type": "qwen2"}).params == 196 + 8


def test_largest_layer_is_the_biggest_single_module():
    assert PRESETS["llama2-7b"].largest_layer_params == 32000 * 4096        # embeddings > 4096·11008 MLP
    assert PRESETS["qwen2-72b"].largest_layer_params == 152064 * 8192


def test_from_hf_config_names_missing_keys():
    with pytest.raises(ValueError, match="hidden_size"):
        ModelShape.from_hf_config({k: v for k, v in SMOLLM2_CONFIG.items() if k != "hidden_size"})


# --------------------------------------------------------------------------- FLOPs

def test_6nt_and_attention_on_the_toy_by_hand():
    # rows of 3 tokens: keys per token 1, 2, 3 → mean 2
    # dense = 6 · 196 · 1000 = 1,176,000
    # attention forward per token = 2 matmuls · 2 FLOP · q_dim 4 · 2 keys · 1 layer = 32; ×3 (fwd+bwd) ×1000
    f = training_flops(TOY, 1000, seq_len=3)
    assert f.dense == 1_176_000
    assert f.attention == 96_000
    assert f.recompute == 0
    assert f.total == 1_272_000


def test_mean_keys_from_lengths_and_histograms():
    assert mean_keys_per_token(3) == 2
    assert mean_keys_per_token([1, 3]) == pytest.approx(7 / 4)   # (1 + 6) key visits / 4 tokens
    assert mean_keys_per_token({"1": 1, "3": 1}) == pytest.approx(7 / 4)
    assert mean_keys_per_token({4096: 10}) == pytest.approx(4097 / 2)


def test_checkpointing_adds_exactly_one_forward_of_the_layers():
    shape, tokens = PRESETS["llama2-7b"], 1e6
    plain = training_flops(shape, tokens, 4096)
    ckpt = training_flops(shape, tokens, 4096, grad_checkpointing=True)
    assert ckpt.dense == plain.dense and ckpt.attention == plain.attention
    # one more forward: 2·N_layers·T dense + the attention forward (a third of fwd+bwd)
    assert ckpt.recompute == pytest.approx(2 * shape.decoder_params * tokens + plain.attention / 3)
    # on the checkpointed layers the dense work goes from 6 to 8 FLOPs per parameter and token
    layers_dense = 6 * shape.decoder_params * tokens
    recompute_dense = ckpt.recompute - plain.attention / 3
    assert (layers_dense + recompute_dense) / layers_dense == pytest.approx(8 / 6)


# --------------------------------------------------------------------------- time and MFU

def test_time_by_hand():
    # 1,272,000 FLOPs on 2 devices of 1e6 FLOP/s at MFU 0.5 → 1.272 s
    gpu = get_gpu("cpu", peak_flops=1e6)
    t = estimate_time(TOY, 1000, 2, gpu, mfu=0.5, seq_len=3, epochs=3)
    assert t.hours_per_epoch * 3600 == pytest.approx(1.272)
    assert t.gpu_hours == pytest.approx(3 * 2 * 1.272 / 3600)


@pytest.mark.parametrize("ckpt", [False, True])
def test_implied_mfu_round_trip(ckpt):
    shape, lengths = PRESETS["qwen1.5-14b"], {4096: 50, 1000: 200, 300: 30}
    t = estimate_time(shape, 470e6, 8, "a100-80g", mfu=0.27, seq_len=lengths, grad_checkpointing=ckpt)
    back = implied_mfu(shape, 470e6, t.hours_per_epoch, 8, "a100-80g", seq_len=lengths, grad_checkpointing=ckpt)
    assert back == pytest.approx(0.27, rel=1e-12)


def test_seed_table_implied_mfu_7b():
    # 6·N_compute·T + attention = (6·6,607,343,616 + 6·32·4096·4097)·470e6 = 2.0149e19 FLOPs
    # over 25 h · 3600 · 4 · 312e12 = 1.1232e20 → 0.1794
    rows = {r["model"]: r for r in seed_table()}
    assert rows["llama2-7b"]["seed_mfu_no_ckpt"] == pytest.approx(0.1794, abs=1e-4)
    assert rows["llama2-7b"]["seed_mfu_ckpt"] > rows["llama2-7b"]["seed_mfu_no_ckpt"]
    assert rows["qwen2-72b"]["checkpointing"] == "yes"
    assert set(rows) == {"llama2-7b", "qwen1.5-14b", "qwen2-72b"}


def test_measured_mfu_from_train_py_metrics_is_rescaled(tmp_path):
    shape = PRESETS["llama2-7b"]
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"mfu": 0.15, "parameters": shape.params}))
    mfu, how = read_measured_mfu(metrics, shape, 4096)
    assert mfu == pytest.approx(0.15 * training_flops(shape, 1, 4096).total / (6 * shape.params))
    assert "measured" in how
    metrics.write_text(json.dumps({"mfu": 0.15, "mfu_convention": "agenttune.cost"}))
    assert read_measured_mfu(metrics, shape, 4096)[0] == 0.15
    metrics.write_text(json.dumps({"mfu": None}))
    with pytest.raises(ValueError):
        read_measured_mfu(metrics, shape)


# --------------------------------------------------------------------------- memory

def test_zero3_model_states_match_deepspeed_formula_by_hand():
    # N = 1000, largest layer 100, 2 nodes × 4 GPUs; largest layer memory 4·100 = 400
    assert zero3_model_states_mem(1000, 100, 4, 2) == (2400, 400 + 2250, 400)        # cpu 100·4·4·1.5; 18·1000/8
    assert zero3_model_states_mem(1000, 100, 4, 2, cpu_offload=True) == (12000, 400 + 250, 400)  # 16·1000/2·1.5
    assert zero3_model_states_mem(1000, 100, 4, 2, True, True) == (13500, 400, 400)    # 18·1000/2·1.5
    assert zero3_model_states_mem(1000, 100, 4, 2, zero_init=False)[0] == 24000         # 1000·4·4·1.5
    # parameter offload alone is not a DeepSpeed configuration: counted as no offload, as DeepSpeed does
    assert zero3_model_states_mem(1000, 100, 4, 2, cpu_offload_params=True) == (2400, 2650, 400)


def test_zero3_formula_agrees_with_deepspeed_when_installed():
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as ds
    except Exception:  # not installed, or no accelerator to import against
        pytest.skip("deepspeed not importable here")
    for opt, params in ((False, False), (True, False), (True, True)):
        for zero_init in (True, False):
            ours = zero3_model_states_mem(72_706_203_648, 1_245_708_288, 8, 4, opt, params, zero_init)
            assert ours == ds(72_706_203_648, 1_245_708_288, 8, 4, opt, params, zero_init)


def test_memory_components_by_hand():
    shape = PRESETS["llama2-7b"]
    mem = estimate_memory_zero3(shape, 4, seq_len=4096, grad_checkpointing=True)
    assert mem.model_states == 4 * 131_072_000 + int(18 * 6_738_415_616 / 4)
    # layer inputs 4096 tokens · 32 layers · 4096 hidden · 2 bytes + one layer 4096 · 34 · 4096
    assert mem.activations == 4096 * 32 * 4096 * 2 + 4096 * 34 * 4096
    assert mem.logits == 4096 * 32000 * 10
    assert mem.per_gpu == mem.model_states + mem.activations + mem.logits + 3 * GiB
    no_ckpt = estimate_memory_zero3(shape, 4, seq_len=4096)
    assert no_ckpt.activations == 4096 * 32 * 34 * 4096
    no_flash = estimate_memory_zero3(shape, 4, seq_len=4096, flash_attn=False)
    assert no_flash.activations == 4096 * 32 * (34 * 4096 + 5 * 32 * 4096)


# --------------------------------------------------------------------------- preflight

def test_preflight_refuses_72b_on_8_a100s_and_its_nearest_fit_fits():
    plan = Plan(PRESETS["qwen2-72b"], A100, 8, 1, epochs=2, tokens=470e6)
    verdict = preflight(plan)
    assert not verdict.fits
    assert "GiB per GPU > 80 GiB" in verdict.message
    assert verdict.nearest is not None and "nearest fit" in verdict.message
    again = check(verdict.nearest.plan)
    assert again.fits and again.memory.per_gpu <= A100.memory_bytes
    assert verdict.nearest.plan.n_gpus > 8


def test_preflight_time_limit_asks_for_more_gpus():
    plan = Plan(PRESETS["qwen2-72b"], A100, 8, 1, tokens=470e6, time_limit_hours=48)
    verdict = preflight(plan)
    assert "time limit 48 h" in verdict.message
    nearest = verdict.nearest
    assert nearest.time.hours_per_epoch <= 48 and check(nearest.plan).fits


def test_preflight_accepts_7b_on_4_a100s_with_checkpointing():
    plan = Plan(PRESETS["llama2-7b"], A100, 4, 1, epochs=5, tokens=470e6, max_len=4096, grad_checkpointing=True)
    verdict = preflight(plan)
    assert verdict.fits and verdict.nearest is None
    assert verdict.message.startswith("fits:")


def test_preflight_tries_shorter_max_len_last():
    # a 7B on one 40G GPU cannot hold its 18·N bytes of states at any length without offload,
    # so the search must reach offload on the same GPU before anything else
    plan = Plan(PRESETS["llama2-7b"], GPUS["a100-40g"], 1, 1, tokens=1e6)
    nearest = preflight(plan).nearest
    assert nearest is not None and check(nearest.plan).fits
    assert nearest.plan.max_len == 4096


# --------------------------------------------------------------------------- CLI

def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "agenttune.cluster.cost", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_cli_fits_exit_0():
    r = run_cli("--model", "llama2-7b", "--gpus", "4", "--gpu", "a100-80g", "--nodes", "1", "--epochs", "5",
                "--tokens", "470e6", "--grad-checkpointing")
    assert r.returncode == 0, r.stderr
    assert "fits" in r.stdout and "MFU 0.20, default" in r.stdout


def test_cli_refuses_exit_3_with_nearest_fit_on_stderr():
    r = run_cli("--model", "qwen2-72b", "--gpus", "8", "--epochs", "2", "--tokens", "470e6")
    assert r.returncode == 3
    assert "does not fit" in r.stderr and "nearest fit" in r.stderr


def test_cli_manifest_metrics_config_and_tables(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"total_tokens": 2_000_000, "row_lengths": {"512": 100, "2048": 10}}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"mfu": 0.3, "parameters": 134_515_008}))
    md, csv_path = tmp_path / "plan.md", tmp_path / "plan.csv"
    r = run_cli("--model", str(tmp_path / "config.json"), "--gpus", "1", "--manifest", str(manifest),
                "--metrics", str(metrics), "--out-md", str(md), "--out-csv", str(csv_path))
    assert r.returncode == 0, r.stderr
    assert "measured" in r.stdout and "2,000,000 tokens" in r.stdout
    assert md.read_text().startswith("| config |") and "plan" in csv_path.read_text()


def test_cli_seed_table_and_usage_errors(tmp_path):
    out = tmp_path / "seed.csv"
    r = run_cli("--seed-table", "--out-csv", str(out))
    assert r.returncode == 0, r.stderr
    assert "llama2-7b" in r.stdout and out.read_text().count("\n") == 4
    assert run_cli("--model", "no-such-model", "--tokens", "1e6").returncode == 2
    assert run_cli("--model", "llama2-7b").returncode == 2  # no token count


# --------------------------------------------------------------------------- run-level preflight

def _llama_config(layers, hidden, inter, heads, kv, vocab):
    return {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": inter,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
            "tie_word_embeddings": False}


def test_plan_for_run_reads_manifest_and_refuses_what_cannot_fit():
    from agenttune.cluster.cost.preflight import plan_for_run, run_preflight

    qwen72 = _llama_config(80, 8192, 29568, 64, 8, 152064)
    qwen72["model_type"] = "qwen2"
    manifest = {"total_tokens": 470e6}
    plan = plan_for_run(qwen72, manifest, {"device": "a100-80g", "devices": 8}, epochs=2, max_len=4096)
    assert plan.tokens == 470e6 and plan.n_gpus == 8 and plan.mfu_source == "default"
    verdict, rows = run_preflight(plan)
    assert not verdict.fits and verdict.nearest is not None and verdict.nearest.fits
    assert "nearest fit" in verdict.message and rows

    llama7 = _llama_config(32, 4096, 11008, 32, 32, 32000)
    plan = plan_for_run(llama7, manifest, {"device": "a100-80g", "devices": 4, "mfu": 0.18,
                                           "mfu_source": "seed"}, epochs=5, max_len=4096, grad_checkpointing=True)
    verdict, _ = run_preflight(plan)
    assert verdict.fits and plan.mfu == 0.18


def test_plan_for_run_rejects_an_empty_manifest():
    from agenttune.cluster.cost.preflight import plan_for_run

    with pytest.raises(ValueError, match="no training tokens"):
        plan_for_run(_llama_config(2, 64, 128, 4, 2, 100), {"total_tokens": 0}, {"device": "cpu", "devices": 1,
                     "device_peak_flops": 1e11}, epochs=1, max_len=512)


def test_freeze_tuning_flops_by_hand():
    """Freeze tuning: forward over everything, backward (2x forward) through the k trainable top layers, the
    input gradient only (1x forward) through the frozen lm_head, nothing below the lowest trainable layer."""
    shape = ModelShape("toy", layers=4, hidden=8, intermediate=16, heads=2, kv_heads=2, vocab=32, tie_embeddings=True)
    tokens, k = 1000, 1
    layer = shape.layer_params
    assert layer == (8 * 8 * 4) + 3 * 8 * 16 + 2 * 8  # q, k, v, o + gate/up/down + 2 norms = 656
    lm_head = 32 * 8
    frozen = training_flops(shape, tokens, seq_len=3, trainable_layers=k)
    full = training_flops(shape, tokens, seq_len=3)
    assert frozen.dense == 2 * shape.compute_params * tokens + 4 * k * layer * tokens + 2 * lm_head * tokens
    # attention: forward in all 4 layers, backward (2x) in 1 of them
    assert frozen.attention == pytest.approx(full.attention / 3 * (1 + 2 * k / 4))
    assert frozen.recompute == 0
    ckpt = training_flops(shape, tokens, seq_len=3, grad_checkpointing=True, trainable_layers=k)
    assert ckpt.recompute == pytest.approx(2 * k * layer * tokens + full.attention / 3 * k / 4)
    # every layer trainable is still freeze tuning: the lm_head gets no weight gradient
    all_layers = training_flops(shape, tokens, seq_len=3, trainable_layers=4)
    # (and 4 FLOPs per token for each final-norm weight, which 6·N_c counts and the freeze count leaves out)
    assert full.dense - all_layers.dense == (2 * lm_head + 4 * 8) * tokens and all_layers.attention == full.attention
    assert training_flops(shape, tokens, seq_len=3, trainable_layers=9) == all_layers
    assert frozen.total < full.total


# --------------------------------------------------------------------------- LoRA and QLoRA (issue 21)

from agenttune.cluster.cost.adapters import LINEAR_MODULES, LoraSpec, lora_spec, quantized_params  # noqa: E402
from agenttune.cluster.cost.memory import (estimate_memory_lora, lora_activation_bytes,  # noqa: E402
                                           lora_model_states_mem)


def test_lora_adapter_params_toy_by_hand():
    # TOY: hidden 4, q 4, kv 2 (GQA), intermediate 8. r·(in + out) per linear at r = 2:
    # q 2·(4+4) = 16, k 2·(4+2) = 12, v 12, o 2·(4+4) = 16, gate 2·(4+8) = 24, up 24, down 2·(8+4) = 24 → 128
    assert LoraSpec(rank=2).adapter_params(TOY) == 128
    assert LoraSpec(rank=2, target_modules=("q_proj", "v_proj")).adapter_params(TOY) == 28
    assert LoraSpec(rank=2).adapter_forward_flops_per_token(TOY) == 256
    # modules_to_save trains a copy of the module in full: lm_head 10·4 = 40, final norm 4
    spec = LoraSpec(rank=2, modules_to_save=("lm_head", "norm"))
    assert spec.saved_params(TOY) == 44 and spec.trainable_params(TOY) == 172 and spec.saved_linear_params(TOY) == 40


def test_lora_adapter_params_of_qwen25_7b_and_llama31_70b():
    # Qwen2.5-7B (hidden 3584, kv 4·128 = 512, intermediate 18944, 28 layers), rank 16, all-linear, per layer:
    # q 16·(3584+3584) = 114,688, k 16·(3584+512) = 65,536, v 65,536, o 114,688,
    # gate, up, down 16·(3584+18944) = 360,448 each → 1,441,792; · 28 = 40,370,176 (0.53% of 7,615,616,512)
    qwen = PRESETS["qwen2.5-7b"]
    assert qwen.params == 7_615_616_512
    assert LoraSpec().adapter_params(qwen) == 40_370_176
    # Llama-3.1-70B (hidden 8192, kv 8·128 = 1024, intermediate 28672, 80 layers), rank 16, per layer:
    # q, o 16·16384 = 262,144 each; k, v 16·9216 = 147,456 each; gate, up, down 16·36864 = 589,824 each
    # → 2,588,672; · 80 = 207,093,760
    llama = PRESETS["llama3.1-70b"]
    assert llama.params == 70_553_706_496
    assert LoraSpec("qlora").adapter_params(llama) == 207_093_760


def test_qlora_base_bytes_by_hand():
    # TOY: the seven linears hold 16 + 8 + 8 + 16 + 32 + 32 + 32 = 144 weights, quantized; the other 52 parameters
    # (embedding 40, 2 norms 8, final norm 4) stay at 2 bytes = 104.
    assert quantized_params(TOY) == 144
    # double quant: 4 + 8/64 + 32/(64·256) = 4.126953125 bits → 144 · 4.126953125 / 8 = 74.29 → 74 bytes
    assert LoraSpec("qlora").base_bytes(TOY) == 74 + 104
    # without: 4 + 32/64 = 4.5 bits → 81 bytes
    assert LoraSpec("qlora", double_quant=False).base_bytes(TOY) == 81 + 104
    assert LoraSpec("lora").base_bytes(TOY) == 196 * 2
    # Llama-3.1-70B: 68,451,041,280 linear weights (80 · 855,638,016); the rest 2,102,665,216 (embeddings and
    # lm_head 2 · 128256 · 8192, norms) at 16 bits
    llama = PRESETS["llama3.1-70b"]
    assert quantized_params(llama) == 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    base = LoraSpec("qlora").base_bytes(llama)
    assert base == int(68_451_041_280 * 4.126953125 / 8) + 2 * 2_102_665_216
    assert round(base / GiB, 1) == 36.8 and base < llama.params * 2 * 0.29  # 28% of the 16-bit base


def test_lora_model_states_by_hand():
    spec = LoraSpec(rank=2)  # 128 trainable parameters, base 196 · 2 = 392 bytes, largest module 40 (embedding)
    # no offload: 2·40 + 392/2 + 18·128/2 on each of 2 GPUs; CPU as DeepSpeed's zero_init: 1.5 · 4 · 40 · 2
    cpu, gpu, largest, base, adapter = lora_model_states_mem(TOY, spec, num_gpus_per_node=2)
    assert (cpu, gpu, largest, base, adapter) == (480, 80 + 196 + 1152, 80, 196, 1152)
    # optimizer offload: the adapter's 16 bytes/param on the CPU (× 1.5), its 2-byte copy on the GPUs
    cpu, gpu, *_ = lora_model_states_mem(TOY, spec, 2, cpu_offload=True)
    assert (cpu, gpu) == (16 * 128 * 1.5, 80 + 196 + 128)
    cpu, gpu, *_ = lora_model_states_mem(TOY, spec, 2, cpu_offload=True, cpu_offload_params=True)
    assert (cpu, gpu) == ((392 + 18 * 128) * 1.5, 80)
    # modules_to_save lm_head (as large as the largest module): its gradient is gathered too
    _, gpu, largest, _, adapter = lora_model_states_mem(TOY, LoraSpec(rank=2, modules_to_save=("lm_head",)), 1)
    assert largest == 160 and adapter == 18 * 168
    # QLoRA: the 4-bit base (178 bytes) split over the GPUs
    _, gpu, _, base, _ = lora_model_states_mem(TOY, LoraSpec("qlora", rank=2), 2)
    assert base == 89


def test_lora_activations_by_hand():
    # per token and layer: r·2 bytes for each of the 7 lora_B inputs (28) + with dropout the dropped copy of each
    # lora_A input and its mask, 3 bytes per value: inputs 4+4+4+4+4+4+8 = 32 → 96. 3 tokens, 1 layer.
    assert lora_activation_bytes(TOY, LoraSpec(rank=2), 3, False) == 3 * (28 + 96)
    assert lora_activation_bytes(TOY, LoraSpec(rank=2, dropout=0.0), 3, False) == 3 * 28
    two = ModelShape("toy2", layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tie_embeddings=True)
    one_layer = lora_activation_bytes(TOY, LoraSpec(rank=2), 3, False)
    assert lora_activation_bytes(two, LoraSpec(rank=2), 3, False) == 2 * one_layer
    assert lora_activation_bytes(two, LoraSpec(rank=2), 3, True) == 3 * (28 + 96)  # checkpointing: one layer
    mem = estimate_memory_lora(two, LoraSpec(rank=2), 1, seq_len=3)
    full = estimate_memory_zero3(two, 1, seq_len=3)
    assert mem.activations == full.activations + mem.adapter_activations == full.activations + 2 * 3 * 124
    assert mem.breakdown_gib()["frozen_base"] == mem.frozen_base / GiB
    assert "frozen_base" not in full.breakdown_gib()  # full tuning's table keeps its columns


def test_lora_memory_is_below_full_tuning_and_monotonic():
    qwen = PRESETS["qwen2.5-7b"]
    last = {}
    for n in (1, 2, 4, 8):
        full = estimate_memory_zero3(qwen, n, seq_len=4096).per_gpu
        lora = estimate_memory_lora(qwen, LoraSpec(), n, seq_len=4096).per_gpu
        qlora = estimate_memory_lora(qwen, LoraSpec("qlora"), n, seq_len=4096)
        assert qlora.per_gpu < lora < full
        assert qlora.frozen_base < estimate_memory_lora(qwen, LoraSpec(), n, seq_len=4096).frozen_base
        if last:
            assert lora < last["lora"] and qlora.per_gpu < last["qlora"]
        last = {"lora": lora, "qlora": qlora.per_gpu}
    ranks = [estimate_memory_lora(qwen, LoraSpec(rank=r), 2, seq_len=4096).per_gpu for r in (8, 16, 64)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3
    # the adapter's states are a small part: 18 bytes · 40,370,176 / 2 GPUs
    assert estimate_memory_lora(qwen, LoraSpec(), 2, seq_len=4096).adapter_states == 18 * 40_370_176 // 2


def test_lora_flops_by_hand():
    # TOY, 10 tokens in rows of 1 (k̄ = 1): attention forward 4 · q_dim 4 · 1 · 1 layer · 10 = 160.
    # LoRA r = 2: forward 2·196 + 256 (adapters), backward input gradients 2·196, adapters' weight + input
    # gradients 2·256 → dense (4·196 + 3·256) · 10 = 15,520; attention forward + backward 3 · 160.
    spec = LoraSpec(rank=2)
    lora = training_flops(TOY, 10, seq_len=1, lora=spec)
    assert (lora.dense, lora.attention, lora.recompute) == (15_520, 480, 0)
    # checkpointing: one more forward of the decoder layer (152 parameters) with its adapters, and its attention
    ckpt = training_flops(TOY, 10, seq_len=1, grad_checkpointing=True, lora=spec)
    assert ckpt.recompute == (2 * 152 + 256) * 10 + 160
    # modules_to_save lm_head adds its weight gradient, 2 · 40 per token
    saved = training_flops(TOY, 10, seq_len=1, lora=LoraSpec(rank=2, modules_to_save=("lm_head",)))
    assert saved.dense == lora.dense + 2 * 40 * 10
    # at 7B the adapters are small: about 2/3 of full tuning's dense FLOPs,
    # (4 · 7,070,619,136 + 3 · 80,740,352) / (6 · 7,070,619,136) = 0.6724
    qwen = PRESETS["qwen2.5-7b"]
    full7, lora7 = training_flops(qwen, 1e6, 4096), training_flops(qwen, 1e6, 4096, lora=LoraSpec())
    assert lora7.dense / full7.dense == pytest.approx(0.6724, abs=1e-4)
    assert lora7.attention == full7.attention and lora7.total < full7.total
    assert training_flops(qwen, 1e6, 4096, lora=LoraSpec("qlora")) == lora7  # dequantization is not counted
    ranks = [training_flops(qwen, 1e6, 4096, lora=LoraSpec(rank=r)).total for r in (8, 16, 64)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3
    # implied_mfu stays the exact inverse with adapters
    t = estimate_time(qwen, 1e8, 2, A100, mfu=0.2, seq_len=4096, lora=LoraSpec())
    assert implied_mfu(qwen, 1e8, t.hours_per_epoch, 2, A100, 4096, lora=LoraSpec()) == pytest.approx(0.2)


def test_lora_adapter_on_lm_head_by_hand():
    # lm_head is one hidden × vocab linear outside the decoder layers: r·(hidden + vocab) = 2·(4 + 10) = 28, once
    head = LoraSpec(rank=2, target_modules=("lm_head",))
    assert head.adapter_params(TOY) == 28 and head.layer_adapter_params(TOY) == 0
    both = LoraSpec(rank=2, target_modules=LINEAR_MODULES + ("lm_head",))
    two = ModelShape("toy2", layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10, tie_embeddings=True)
    assert both.adapter_params(TOY) == 128 + 28 and both.adapter_params(two) == 2 * 128 + 28
    assert both.trainable_params(TOY) == 156 and "lm_head" in both.describe(TOY)
    # Qwen2.5-7B, rank 16: 16 · (3584 + 152064) = 2,490,368
    assert LoraSpec(target_modules=("lm_head",)).adapter_params(PRESETS["qwen2.5-7b"]) == 2_490_368
    # activations: lm_head's lora_B input (r·2 = 4 bytes) and the dropped copy of its input with the mask (4 values ·
    # 3 bytes = 12) per token, once; kept under checkpointing too (lm_head is outside the checkpointed layers)
    assert lora_activation_bytes(two, both, 3, False) == 3 * (2 * 124 + 16)
    assert lora_activation_bytes(two, both, 3, True) == 3 * (124 + 16)
    assert lora_activation_bytes(two, LoraSpec(rank=2, target_modules=("lm_head",), dropout=0.0), 3, False) == 3 * 4
    # FLOPs: the adapter's forward 2·28 per token, its backward 2 × that; checkpointing recomputes the layers' only
    plain = training_flops(TOY, 10, seq_len=1, lora=LoraSpec(rank=2))
    with_head = training_flops(TOY, 10, seq_len=1, lora=both)
    assert with_head.dense == plain.dense + 3 * 56 * 10 and with_head.attention == plain.attention
    ckpt = training_flops(TOY, 10, seq_len=1, grad_checkpointing=True, lora=both)
    assert ckpt.recompute == training_flops(TOY, 10, seq_len=1, grad_checkpointing=True,
                                            lora=LoraSpec(rank=2)).recompute == (2 * 152 + 256) * 10 + 160


def test_lora_names_the_cost_model_cannot_size_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules: adapter_probe cannot be sized by the "
                                         r"cost model .*neither the preflight nor the trainer accepts it.*lm_head"):
        lora_spec({"tuning": "lora", "lora": {"target_modules": ["q_proj", "adapter_probe"]}})
    with pytest.raises(ValueError, match=r"train\.lora\.modules_to_save: self_attn cannot be sized"):
        lora_spec({"tuning": "lora", "lora": {"modules_to_save": ["self_attn"]}})
    assert lora_spec({"tuning": "lora", "lora": {"target_modules": ["lm_head"]}}).target_modules == ("lm_head",)


def test_lora_spec_defaults_are_the_schemas(monkeypatch):
    """LoraSpec writes no train.lora default of its own: a field left out takes config/schema.yaml's."""
    import copy

    from agenttune.common import config

    assert LoraSpec() == lora_spec({"tuning": "lora"}) and LoraSpec(rank=2).dropout == 0.05
    schema = copy.deepcopy(config.load_schema())
    lora_schema = schema["properties"]["train"]["properties"]["lora"]["properties"]
    lora_schema["rank"]["default"], lora_schema["dropout"]["default"] = 7, 0.0
    lora_schema["target_modules"]["default"] = ["q_proj"]
    monkeypatch.setattr(config, "load_schema", lambda *a, **k: schema)
    spec = LoraSpec("qlora")
    assert (spec.rank, spec.dropout, spec.target_modules, spec.quant_type) == (7, 0.0, ("q_proj",), "nf4")
    assert LoraSpec(rank=3).rank == 3


def test_lora_spec_reads_the_train_section_and_names_bad_keys():
    assert lora_spec({"tuning": "full"}) is None and lora_spec({"tuning": "freeze"}) is None
    spec = lora_spec({"tuning": "lora"})  # the schema's defaults
    assert (spec.method, spec.rank, spec.target_modules, spec.modules_to_save, spec.merge) == (
        "lora", 16, LINEAR_MODULES, (), "auto")
    spec = lora_spec({"tuning": "qlora", "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"],
                                                  "double_quant": False, "quant_type": "fp4"}})
    assert (spec.quantized, spec.rank, spec.target_modules, spec.double_quant, spec.quant_type) == (
        True, 8, ("q_proj", "v_proj"), False, "fp4")
    with pytest.raises(ValueError, match="train.lora.target_modules: qkv_proj"):
        lora_spec({"tuning": "lora", "lora": {"target_modules": ["qkv_proj"]}})
    with pytest.raises(ValueError, match="train.lora.modules_to_save: wte"):
        lora_spec({"tuning": "lora", "lora": {"modules_to_save": ["wte"]}})
    # merge auto: LoRA up to 20B, never QLoRA
    assert LoraSpec().merged(PRESETS["qwen2.5-7b"]) and not LoraSpec().merged(PRESETS["llama3.1-70b"])
    assert not LoraSpec("qlora").merged(PRESETS["qwen2.5-7b"]) and not LoraSpec(merge=False).merged(TOY)


def test_preflight_accepts_lora_where_full_tuning_does_not_fit():
    llama70 = PRESETS["llama3.1-70b"]
    plan = Plan(llama70, A100, 1, 1, tokens=10e6, grad_checkpointing=True)
    full = check(plan)
    lora = check(Plan(llama70, A100, 1, 1, tokens=10e6, grad_checkpointing=True, lora=LoraSpec()))
    qlora = preflight(Plan(llama70, A100, 1, 1, tokens=10e6, grad_checkpointing=True, lora=LoraSpec("qlora")))
    assert not full.fits and not lora.fits  # 18 bytes/param; a 16-bit 70B base is 131 GiB
    assert qlora.fits and qlora.memory.per_gpu < A100.memory_bytes, qlora.message
    assert "qlora r16 all-linear (207,093,760 trainable parameters, 4-bit base)" in qlora.message
    # 7B: full tuning needs 4 A100s without offload, LoRA fits on 2 (and on 1)
    qwen = PRESETS["qwen2.5-7b"]
    assert not check(Plan(qwen, A100, 2, 1, tokens=470e6)).fits
    assert check(Plan(qwen, A100, 2, 1, tokens=470e6, lora=LoraSpec())).fits
    assert check(Plan(qwen, A100, 1, 1, tokens=470e6, lora=LoraSpec())).fits


def test_preflight_refuses_what_cannot_fit_even_with_qlora():
    llama70 = PRESETS["llama3.1-70b"]
    # one A100-40G cannot hold the 4-bit 70B with its activations and loss buffers: the nearest fit is 2 of them
    verdict = preflight(Plan(llama70, GPUS["a100-40g"], 1, 1, tokens=10e6, grad_checkpointing=True,
                             lora=LoraSpec("qlora")))
    assert not verdict.fits and "GiB per GPU > 40 GiB" in verdict.problems[0]
    assert verdict.nearest.plan.n_gpus == 2 and verdict.nearest.plan.lora.quantized
    assert not verdict.nearest.plan.offload_optimizer  # QLoRA's search never offers offload
    # QLoRA with DeepSpeed offload: refused with the reason, nearest fit with offload off
    verdict = preflight(Plan(llama70, A100, 8, 1, tokens=10e6, grad_checkpointing=True, offload_optimizer=True,
                             lora=LoraSpec("qlora")))
    assert not verdict.fits and "qlora with train.deepspeed offload_optimizer/offload_params" in verdict.message
    assert verdict.nearest.changes == ["optimizer offload off"] and verdict.nearest.fits
    # QLoRA on a CPU: refused, nothing searched
    cpu = get_gpu("cpu", peak_flops=1e11)
    verdict = preflight(Plan(PRESETS["smollm2-135m"], cpu, 1, 1, tokens=1e6, max_len=2048, lora=LoraSpec("qlora")))
    assert not verdict.fits and verdict.nearest is None
    assert "train.tuning qlora needs GPUs" in verdict.message and "no configuration fits" not in verdict.message
    assert preflight(Plan(PRESETS["smollm2-135m"], cpu, 1, 1, tokens=1e6, max_len=2048, lora=LoraSpec())).fits


def test_plan_for_run_with_lora_and_its_table_rows():
    from agenttune.cluster.cost.preflight import plan_for_run, run_preflight

    qwen7 = _llama_config(28, 3584, 18944, 28, 4, 152064)
    qwen7["model_type"] = "qwen2"
    manifest = {"total_tokens": 470e6}
    compute = {"device": "a100-80g", "devices": 2}
    lora = plan_for_run(qwen7, manifest, compute, epochs=3, max_len=4096, lora=lora_spec({"tuning": "lora"}))
    verdict, rows = run_preflight(lora)
    assert verdict.fits and rows[0]["tuning"] == "lora" and rows[0]["trainable_params"] == 40_370_176
    assert rows[0]["frozen_base_GiB"] == round(7_615_616_512 * 2 / 2 / GiB, 2)
    full_verdict, full_rows = run_preflight(plan_for_run(qwen7, manifest, compute, epochs=3, max_len=4096))
    assert not full_verdict.fits
    assert "tuning" not in full_rows[0] and "frozen_base_GiB" not in full_rows[0]  # full tuning's table as it was


def test_evaluation_sizing_counts_the_adapter():
    from agenttune.cluster.cost.evaluation import EvalWork, estimate_eval_job
    from agenttune.common.config import section_with_defaults

    evaluate = section_with_defaults({"precision": "bf16", "engine": "hf", "batch_size": 4}, "evaluate")
    work = EvalWork("predict", 100, 1000, 4096, 256)
    qwen, llama = PRESETS["qwen2.5-7b"], PRESETS["llama3.1-70b"]
    plain = estimate_eval_job(qwen, A100, work, evaluate)
    merged = estimate_eval_job(qwen, A100, work, evaluate, lora=LoraSpec())  # auto merges a 7B
    assert merged == plain and "adapter" not in merged.as_dict()
    unmerged = estimate_eval_job(qwen, A100, work, evaluate, lora=LoraSpec(merge=False))
    assert unmerged.weights_bytes == plain.weights_bytes + 40_370_176 * 2
    assert unmerged.as_dict()["adapter"] == "lora r16, unmerged" and unmerged.runtime_min >= plain.runtime_min
    # QLoRA, never merged: the 4-bit base + the adapter at bf16
    q = estimate_eval_job(llama, A100, work, evaluate, lora=LoraSpec("qlora"))
    assert q.weights_bytes == LoraSpec("qlora").base_bytes(llama) + 207_093_760 * 2
    assert q.dtype == "nf4+bf16" and q.fits and q.gpus == 1
    full70 = estimate_eval_job(llama, A100, work, evaluate)
    assert full70.gpus > q.gpus
    # on a CPU the 4-bit base cannot load
    cpu = estimate_eval_job(PRESETS["smollm2-135m"], None, work, evaluate, lora=LoraSpec("qlora"))
    assert not cpu.fits and "needs a GPU" in cpu.problems[0]


def test_seed_table_lora_and_qlora_columns():
    plain = seed_table()
    rows = seed_table(adapters=(LoraSpec(), LoraSpec("qlora")))
    for p, r in zip(plain, rows):
        assert {k: r[k] for k in p} == p  # the full-tuning columns unchanged
        assert r["lora_h_per_epoch"] < r["est_h_per_epoch"] and r["lora_gpu_hours"] < r["est_gpu_hours"]
        assert r["qlora_mem_per_gpu_GiB"] < r["lora_mem_per_gpu_GiB"] < r["mem_per_gpu_GiB"]
        assert r["qlora_fewest_gpus"] <= r["lora_fewest_gpus"] <= int(r["gpus"].split("×")[0])
    by_model = {r["model"]: r for r in rows}
    # 72B: LoRA fits on 4 A100s (the 16-bit base, 135 GiB, split), QLoRA on 1 (the 4-bit base, 38 GiB)
    assert (by_model["qwen2-72b"]["lora_fewest_gpus"], by_model["qwen2-72b"]["qlora_fewest_gpus"]) == (4, 1)


def test_cli_lora_plan_and_seed_table_columns(tmp_path):
    r = run_cli("--model", "qwen2.5-7b", "--gpus", "2", "--tokens", "470e6", "--tuning", "lora")
    assert r.returncode == 0, r.stderr
    assert "lora r16 all-linear (40,370,176 trainable parameters, 16-bit base)" in r.stdout
    assert "| frozen_base |" in r.stdout
    assert run_cli("--model", "qwen2.5-7b", "--gpus", "2", "--tokens", "470e6").returncode == 3  # full tuning
    r = run_cli("--seed-table", "--tuning", "lora,qlora", "--out-csv", str(tmp_path / "seed.csv"))
    assert r.returncode == 0, r.stderr
    header = (tmp_path / "seed.csv").read_text().splitlines()[0]
    assert "lora_h_per_epoch" in header and "qlora_fewest_gpus" in header and "lora_mem_per_gpu_GiB" in r.stdout
    bad = run_cli("--model", "qwen2.5-7b", "--tokens", "1e6", "--tuning", "dora")
    assert bad.returncode == 2 and "--tuning" in bad.stderr
    two = run_cli("--model", "qwen2.5-7b", "--tokens", "1e6", "--tuning", "lora,qlora")
    assert two.returncode == 2 and "one of full, lora, qlora for a plan" in two.stderr


def test_lora_adapter_count_agrees_with_peft():
    """The installed PEFT's trainable parameters for the same shapes (built on the meta device: no memory, no
    weights): all-linear at Qwen2.5-7B's real shape, a target list, and modules_to_save."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    def peft_trainable(config, **lora):
        with torch.device("meta"):
            model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(**lora))
            return sum(p.numel() for p in model.parameters() if p.requires_grad)

    qwen = Qwen2Config(num_hidden_layers=28, hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
    assert ModelShape.from_hf_config(qwen.to_dict()).params == PRESETS["qwen2.5-7b"].params
    assert peft_trainable(qwen, r=16, target_modules="all-linear") == 40_370_176
    small = LlamaConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=160, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=500, tie_word_embeddings=False)
    shape = ModelShape.from_hf_config(small.to_dict())
    spec = LoraSpec(rank=4, target_modules=("q_proj", "v_proj", "down_proj"), modules_to_save=("lm_head",))
    assert peft_trainable(small, r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                          modules_to_save=["lm_head"]) == spec.trainable_params(shape)


def test_lora_activation_estimate_against_what_autograd_saves():
    """What PEFT's LoRA layers really keep for backward, measured on a tiny Llama (fp32, CPU): the bytes of the
    tensors autograd saves (weights left out), LoRA vs full tuning. With dropout the dropped-out copies and masks
    are what the adapters add: the estimate of that part may be above the measurement, never below it, and not by
    more than a quarter. In all, LoRA saves no more than full tuning + the estimate (with frozen norms and lm_head it
    saves a little less: the estimate keeps the base's activations whole)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=160, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=500, tie_word_embeddings=False,
                         attn_implementation="eager")
    seq = 32
    ids = torch.randint(0, 500, (1, seq), generator=torch.Generator().manual_seed(0))

    def saved_bytes(model):
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values())

    torch.manual_seed(0)
    full = saved_bytes(AutoModelForCausalLM.from_config(config))
    shape = ModelShape.from_hf_config(config.to_dict())
    lora, estimate = {}, {}
    for dropout in (0.05, 0.0):
        lora[dropout] = saved_bytes(get_peft_model(AutoModelForCausalLM.from_config(config),
                                                   LoraConfig(r=4, lora_dropout=dropout, target_modules="all-linear")))
        estimate[dropout] = lora_activation_bytes(shape, LoraSpec(rank=4, dropout=dropout), seq, False, dtype_bytes=4)
        assert lora[dropout] <= full + estimate[dropout], (dropout, lora[dropout], full, estimate[dropout])
    # the dropout's copies and masks (measured here: 163,840 bytes; estimated 174,080)
    measured = lora[0.05] - lora[0.0]
    assert measured <= estimate[0.05] - estimate[0.0] <= 1.25 * measured, (measured, estimate)
