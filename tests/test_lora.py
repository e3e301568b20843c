"""LoRA and QLoRA through PEFT (issue 21, part 1): `train.tuning: lora | qlora`, `train.lora`.

Tiny models of each architecture (Llama, Qwen2, Mistral, built from a config with the SmolLM2 tokenizer) train a few
steps in each tuning mode; the adapter epoch folder (PEFT's safetensors + config, lora.json, merged/) reloads equal;
chained epochs, a job killed between step checkpoints, and ZeRO-3 on one and two ranks end bit-identical to the
uninterrupted run; evaluation loads base + adapter or the merged folder through agenttune.train.checkpoint and the
exact engine writes the same text from both; bad `train.lora` settings fail before training, naming the key.
Every test name contains "lora": `-k lora` selects this file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_data import CFG, write_shards

from agenttune.common.manifest import sha256_file
from agenttune.train import lora
from agenttune.train.checkpoint import load_model, resolve_model
from agenttune.train.trainer import run_training, train_epoch, write_job_spec

SEED = 5
LORA = dict(CFG, tuning="lora", lora={"rank": 4, "alpha": 8, "dropout": 0.05})
FAMILIES = ("llama", "qwen2", "mistral")
QUIET = dict(log=lambda m: None)


def tiny_family_model(out: Path, family: str, tokenizer) -> Path:
    """A ~3M-parameter causal LM of `family` from a config (random weights, seed 0), with the SmolLM2 tokenizer."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "mistral": (MistralConfig, MistralForCausalLM)}
    config_cls, model_cls = classes[family]
    config = config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, smol_tokenizer):
    root = tmp_path_factory.mktemp("lora-families")
    return {f: tiny_family_model(root / f, f, smol_tokenizer) for f in FAMILIES}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 12 rows, batch 1, accumulation 2: 6 optimizer steps per epoch.
    return write_shards(tmp_path_factory.mktemp("lora-shards"))


def epoch_losses(folder: Path) -> list[tuple[int, float]]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [(r["step"], r["loss"]) for r in state["log_history"] if "loss" in r]


# --------------------------------------------------------------------------- each family in each tuning mode

@pytest.mark.parametrize("tuning", ["full", "freeze", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_family_trains_in_each_tuning_mode(tmp_path, family_dirs, shards, family, tuning):
    from safetensors import safe_open

    base = family_dirs[family]
    cfg = dict(CFG, tuning=tuning, freeze_trainable_layers=1, learning_rate=3e-3,
               lora={"rank": 8, "alpha": 16, "dropout": 0.0})
    out = tmp_path / "epoch-2"
    metrics = run_training(base, shards, None, out, 2, cfg, SEED, **QUIET)
    curve = epoch_losses(out)
    first, second = [loss for step, loss in curve if step <= 6], [loss for step, loss in curve if step > 6]
    assert sum(second) / len(second) < sum(first) / len(first), curve  # the same samples again: lower loss
    assert metrics["tuning"] == tuning
    with safe_open(str(base / "model.safetensors"), "pt") as fh:
        before = {k: fh.get_tensor(k) for k in fh.keys()}
    if tuning == "lora":
        adapter = load_file(out / lora.ADAPTER_WEIGHTS)
        # PEFT starts lora_B at zero: every B trained away from it, on every projection of both layers.
        b_keys = [k for k in adapter if "lora_B" in k]
        assert len(b_keys) == 2 * 7 and all(adapter[k].abs().sum() > 0 for k in b_keys)
        assert metrics["trainable_parameters"] == sum(t.numel() for t in adapter.values()) < metrics["parameters"] / 50
        assert metrics["lora"]["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"])
        assert not (out / "model.safetensors").exists() and (out / "merged" / "model.safetensors").is_file()
        after = load_file(out / "merged" / "model.safetensors")
        assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
        assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"],
                               before["model.layers.0.self_attn.q_proj.weight"])
        assert torch.equal(after["model.layers.0.input_layernorm.weight"], before["model.layers.0.input_layernorm.weight"])
    else:
        after = load_file(out / "model.safetensors")
        lower_same = torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
        upper_same = torch.equal(after["model.layers.1.mlp.up_proj.weight"], before["model.layers.1.mlp.up_proj.weight"])
        assert (lower_same, upper_same) == ((True, False) if tuning == "freeze" else (False, False))


# --------------------------------------------------------------------------- the epoch folder, chained and resumed

@pytest.fixture(scope="module")
def lora_chain(tmp_path_factory, tiny_model_dir, shards):
    """LoRA epochs 1 and 2 as separate jobs, and both in one uninterrupted run."""
    root = tmp_path_factory.mktemp("lora-chain")
    e1, e2, straight = root / "chained" / "epoch-1", root / "chained" / "epoch-2", root / "straight" / "epoch-2"
    m1 = train_epoch(tiny_model_dir, shards, None, e1, 1, LORA, SEED, **QUIET)
    adapter_e1 = sha256_file(e1 / lora.ADAPTER_WEIGHTS)
    m2 = train_epoch(tiny_model_dir, shards, e1, e2, 2, LORA, SEED, **QUIET)
    ms = run_training(tiny_model_dir, shards, None, straight, 2, LORA, SEED, **QUIET)
    return {"e1": e1, "e2": e2, "straight": straight, "m1": m1, "m2": m2, "ms": ms, "adapter_e1": adapter_e1}


def test_lora_chained_epochs_equal_an_uninterrupted_run(lora_chain):
    e1, e2, straight = lora_chain["e1"], lora_chain["e2"], lora_chain["straight"]
    assert sha256_file(e2 / lora.ADAPTER_WEIGHTS) == sha256_file(straight / lora.ADAPTER_WEIGHTS)
    assert epoch_losses(e2) == epoch_losses(straight) and len(epoch_losses(e2)) == 12
    assert sha256_file(e1 / lora.ADAPTER_WEIGHTS) == lora_chain["adapter_e1"]  # epoch 2 read epoch 1, never wrote it
    assert sha256_file(e1 / lora.ADAPTER_WEIGHTS) != sha256_file(e2 / lora.ADAPTER_WEIGHTS)
    assert sha256_file(e2 / "merged" / "model.safetensors") == sha256_file(straight / "merged" / "model.safetensors")
    manifest = json.loads((e2 / "manifest.json").read_text())
    assert manifest["outputs"][lora.ADAPTER_WEIGHTS] == sha256_file(e2 / lora.ADAPTER_WEIGHTS)
    assert manifest["outputs"]["merged/model.safetensors"] == sha256_file(e2 / "merged" / "model.safetensors")


def test_lora_epoch_folder_records_the_adapter(lora_chain, tiny_model_dir):
    e2, m2 = lora_chain["e2"], lora_chain["m2"]
    adapter_cfg = json.loads((e2 / lora.ADAPTER_CONFIG).read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    # Explicit names (all-linear resolved), and a base path that resolves from anywhere.
    assert sorted(adapter_cfg["target_modules"]) == m2["lora"]["target_modules"]
    assert Path(adapter_cfg["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()
    record = json.loads((e2 / lora.RECORD_NAME).read_text())
    assert record == m2["lora"]
    assert record["tuning"] == "lora" and record["merged"] is True and record["adapter"] == lora.ADAPTER_WEIGHTS
    assert (e2 / record["base_model_relative"]).resolve() == Path(tiny_model_dir).resolve()
    assert m2["trainable_parameters"] == record["trainable_parameters"] == 2 * 4 * (2 * 128 + 2 * 96 + 3 * 192)
    assert (e2 / "merged" / "tokenizer.json").is_file() and (e2 / "merged" / "config.json").is_file()


def test_lora_adapter_saved_and_reloaded_equals(lora_chain, tiny_model_dir):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    e2 = lora_chain["e2"]
    saved = load_file(e2 / lora.ADAPTER_WEIGHTS)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(e2))
    reloaded = get_peft_model_state_dict(model)
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # Base + adapter merged at load time (agenttune.train.checkpoint) holds exactly the merged folder's weights.
    in_memory, source = load_model(e2, **QUIET)
    assert source.kind == "merged"
    shutil.copytree(e2, e2.parent / "unmerged")
    shutil.rmtree(e2.parent / "unmerged" / "merged")
    adapter_only, source = load_model(e2.parent / "unmerged", **QUIET)
    assert source.kind == "adapter" and source.weights_dir == Path(tiny_model_dir).resolve()
    a, b = in_memory.state_dict(), adapter_only.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_resolve_model_kinds(lora_chain, tiny_model_dir, tmp_path):
    assert resolve_model(tiny_model_dir).kind == "model"
    assert resolve_model(tiny_model_dir).describe() == {}
    merged = resolve_model(lora_chain["e2"])
    assert (merged.kind, merged.weights_dir, merged.tuning) == ("merged", lora_chain["e2"] / "merged", "lora")
    assert merged.describe()["weights"] == "merged"
    # A moved results tree: the path relative to the epoch folder still finds the base.
    moved = tmp_path / "moved"
    shutil.copytree(lora_chain["e1"].parent.parent, moved / "run" / "checkpoints")
    base_copy = moved / "run" / "checkpoints" / Path(json.loads(
        (lora_chain["e1"] / lora.RECORD_NAME).read_text())["base_model_relative"])
    assert not base_copy.exists()  # the base was not copied along: falls back to the absolute path
    folder = moved / "run" / "checkpoints" / "chained" / "epoch-1"
    shutil.rmtree(folder / "merged")
    assert resolve_model(folder).weights_dir == Path(tiny_model_dir).resolve()
    record = json.loads((folder / lora.RECORD_NAME).read_text())
    record["base_model"] = str(tmp_path / "gone")
    (folder / lora.RECORD_NAME).write_text(json.dumps(record))
    cfg = json.loads((folder / lora.ADAPTER_CONFIG).read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone-too")
    (folder / lora.ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="base model folder is not there"):
        resolve_model(folder)


def test_lora_with_gradient_checkpointing_trains_the_same_adapter(tmp_path, tiny_model_dir, shards):
    """Checkpointed layers under a frozen base still give the adapters their gradients (the inputs are made to
    require grad): the adapter equals the one trained without checkpointing, up to float rounding."""
    cfg = dict(LORA, epochs=1, lora={"rank": 4, "alpha": 8, "dropout": 0.0, "merge": False})
    plain = train_epoch(tiny_model_dir, shards, None, tmp_path / "plain" / "epoch-1", 1, cfg, SEED, **QUIET)
    ckpt = train_epoch(tiny_model_dir, shards, None, tmp_path / "ckpt" / "epoch-1", 1,
                       dict(cfg, gradient_checkpointing=True), SEED, **QUIET)
    assert ckpt["gradient_checkpointing"] is True
    a = load_file(tmp_path / "plain" / "epoch-1" / lora.ADAPTER_WEIGHTS)
    b = load_file(tmp_path / "ckpt" / "epoch-1" / lora.ADAPTER_WEIGHTS)
    assert all(b[k].abs().sum() > 0 for k in b if "lora_B" in k)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert [r["loss"] for r in plain["loss_curve"]] == pytest.approx([r["loss"] for r in ckpt["loss_curve"]], rel=1e-5)


def test_lora_killed_between_step_checkpoints_resumes_bit_identical(tmp_path, tiny_model_dir, shards, lora_chain):
    from test_midepoch import worker_until_stalled

    from agenttune.train import step_checkpoints as steps

    every_2 = dict(LORA, step_checkpoints={"every_steps": 2, "every_minutes": None, "keep": 2})
    e2 = tmp_path / "epoch-2"
    spec = write_job_spec(tmp_path / "epoch-2.launch.json", tiny_model_dir, shards, lora_chain["e1"], e2, 2, every_2,
                          SEED)
    out = worker_until_stalled(spec, AGENTTUNE_TEST_STALL_AFTER_STEP="9")
    assert any("step checkpoint 8: wrote" in line for line in out), "".join(out[-30:])
    step8 = steps.steps_dir(e2) / "step-8"
    assert (step8 / lora.ADAPTER_WEIGHTS).is_file() and not (step8 / "model.safetensors").exists()
    metrics = train_epoch(tiny_model_dir, shards, lora_chain["e1"], e2, 2, every_2, SEED, **QUIET)
    assert metrics["resumed_from_step"] == 8
    assert sha256_file(e2 / lora.ADAPTER_WEIGHTS) == sha256_file(lora_chain["straight"] / lora.ADAPTER_WEIGHTS)
    assert epoch_losses(e2) == epoch_losses(lora_chain["straight"])


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3 on CPU

@pytest.mark.parametrize("ranks", [1, 2])
def test_lora_zero3_chained_epochs_equal_an_uninterrupted_run(tmp_path, tiny_model_dir, shards, ranks):
    from test_deepspeed import COMPUTE, REPO

    from agenttune.cluster.launch_plan import LaunchPlan
    from agenttune.train import deepspeed as ds
    from agenttune.train.launch import find_free_port, launch_command, launch_environment, run_command

    plan = LaunchPlan("none") if ranks == 1 else LaunchPlan("torchrun", 1, 2, master_port=find_free_port())
    cfg = dict(LORA, deepspeed={"stage": 3}, launcher=plan.launcher, nodes=plan.nodes,
               nproc_per_node=plan.nproc_per_node, master_port=plan.master_port)

    def launch(prev, out, epoch, uninterrupted=False):
        spec = write_job_spec(Path(str(out) + ".launch.json"), tiny_model_dir, shards, prev, out, epoch, cfg, SEED,
                              COMPUTE, uninterrupted=uninterrupted)
        env = {**launch_environment(plan, threads=1 if ranks == 2 else 2, on_gpu=False, deepspeed=True),
               "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
        return run_command(launch_command(plan, spec), env)

    e1, e2, straight = tmp_path / "c" / "epoch-1", tmp_path / "c" / "epoch-2", tmp_path / "s" / "epoch-2"
    assert launch(None, e1, 1) == 0
    assert launch(e1, e2, 2) == 0
    assert launch(None, straight, 2, uninterrupted=True) == 0
    assert ds.zero_checkpoint_world_size(e2) == ranks
    assert (e2 / lora.ADAPTER_WEIGHTS).is_file() and not (e2 / "model.safetensors").exists()
    assert sha256_file(e2 / lora.ADAPTER_WEIGHTS) == sha256_file(straight / lora.ADAPTER_WEIGHTS)
    assert epoch_losses(e2) == epoch_losses(straight)
    m = json.loads((e2 / "metrics.json").read_text())
    assert m["world_size"] == ranks and m["deepspeed_stage"] == 3 and m["tuning"] == "lora"
    assert m["trainable_parameters"] == m["lora"]["trainable_parameters"] == 2 * 4 * (2 * 128 + 2 * 96 + 3 * 192)
    # The gathered adapter is the trained one: it is not PEFT's initial zero lora_B.
    adapter = load_file(e2 / lora.ADAPTER_WEIGHTS)
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    assert resolve_model(e2).kind == "merged"


def test_lora_mfu_counts_the_cost_modules_lora_flops(tiny_model_dir):
    from agenttune.cluster.cost.adapters import lora_spec
    from agenttune.cluster.cost.devices import get_gpu
    from agenttune.cluster.cost.flops import implied_mfu
    from agenttune.cluster.cost.shapes import ModelShape
    from agenttune.train.trainer import measured_mfu

    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    compute = {"device": "cpu", "devices": 1, "device_peak_flops": 1.6e11}
    args = (config, 4000, [100] * 40, 2.0, 1, compute, False, False, lambda m: None, None)
    full = measured_mfu(*args)["mfu"]
    with_lora = measured_mfu(*args, train_cfg=LORA)["mfu"]
    expected = implied_mfu(ModelShape.from_hf_config(config), 4000, 2.0 / 3600, 1, get_gpu("cpu", peak_flops=1.6e11),
                           [100] * 40, False, None, lora_spec(LORA))
    assert with_lora == round(expected, 6) and with_lora < full  # no weight gradients of the frozen base
    # an adapter on lm_head is sized too (r·(hidden + vocab)): recorded, not skipped
    said: list[str] = []
    with_head = dict(LORA, lora={"target_modules": ["q_proj", "lm_head"]})
    on_head = measured_mfu(*args[:8], said.append, None, train_cfg=with_head)["mfu"]
    expected = implied_mfu(ModelShape.from_hf_config(config), 4000, 2.0 / 3600, 1, get_gpu("cpu", peak_flops=1.6e11),
                           [100] * 40, False, None, lora_spec(with_head))
    assert on_head == round(expected, 6) and on_head is not None and not said


# --------------------------------------------------------------------------- the trainer and the cost model agree

TARGET_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens",
                "norm", "self_attn", "mlp", "rotary_emb", "layers", "qkv_proj", "score", "adapter_probe")
SAVED_NAMES = TARGET_NAMES + ("input_layernorm", "post_attention_layernorm")


def accepts(check, *args) -> bool:
    try:
        check(*args)
    except ValueError:
        return False
    return True


def test_lora_trainer_and_cost_model_accept_the_same_names(tiny_model_dir):
    """One rule: every name is accepted by both the trainer (on a real model) and the cost preflight, or by neither.
    `adapter_probe` is an nn.Linear of the model that the cost model cannot size: the trainer must refuse it too."""
    from transformers import AutoModelForCausalLM

    from agenttune.cluster.cost.adapters import lora_spec

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.model.adapter_probe = torch.nn.Linear(4, 4)
    targets = {name: (accepts(lora.resolve_target_modules, model, [name]),
                      accepts(lora_spec, {"tuning": "lora", "lora": {"target_modules": [name]}}))
               for name in TARGET_NAMES}
    assert {n: t for n, (t, c) in targets.items() if t != c} == {}
    assert [n for n, (t, _) in targets.items() if t] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj", "lm_head"]
    saved = {name: (accepts(lora.check_modules_to_save, model, [name]),
                    accepts(lora_spec, {"tuning": "lora", "lora": {"modules_to_save": [name]}}))
             for name in SAVED_NAMES}
    assert {n: t for n, (t, c) in saved.items() if t != c} == {}
    assert sorted(n for n, (t, _) in saved.items() if t) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens",
         "norm", "input_layernorm", "post_attention_layernorm"])
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules: adapter_probe cannot be sized by the cost "
                                         r"model"):
        lora.resolve_target_modules(model, ["q_proj", "adapter_probe"])


@pytest.mark.parametrize("targets, saved", [(["q_proj", "lm_head"], []), ("all-linear", ["lm_head"]),
                                            (["lm_head"], ["norm", "input_layernorm"])])
def test_lora_cost_model_counts_the_adapters_the_trainer_builds(tiny_model_dir, targets, saved):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from agenttune.cluster.cost.adapters import lora_spec
    from agenttune.cluster.cost.shapes import ModelShape
    from agenttune.common.config import section_with_defaults

    lora_cfg = section_with_defaults({"rank": 4, "target_modules": targets, "modules_to_save": saved}, "train", "lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shape = ModelShape.from_hf_config(model.config.to_dict())
    peft_model = get_peft_model(model, lora.lora_config(model, lora_cfg))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == lora_spec({"tuning": "lora", "lora": lora_cfg}).trainable_params(shape)


# --------------------------------------------------------------------------- evaluation loads it

@pytest.fixture(scope="module")
def lively_lora(tmp_path_factory, lively_model_dir, shards):
    """A LoRA epoch on the base that writes varied text, with a large adapter update (lr 2e-2)."""
    out = tmp_path_factory.mktemp("lora-lively") / "epoch-1"
    cfg = dict(LORA, epochs=1, learning_rate=2e-2, lora={"rank": 8, "alpha": 32, "dropout": 0.0})
    train_epoch(lively_model_dir, shards, None, out, 1, cfg, SEED, **QUIET)
    unmerged = out.parent / "epoch-1-unmerged"
    shutil.copytree(out, unmerged)
    shutil.rmtree(unmerged / "merged")
    return {"merged": out, "adapter": unmerged}


def test_lora_exact_engine_same_text_for_base_plus_adapter_and_merged(lively_lora, lively_model_dir):
    from agenttune.evaluate.generate import generate, load_for_generation

    prompts = ["<|im_start|>user\nFind flights to Paris<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "Thought:"]
    stops = [("<|im_end|>",)] * len(prompts)
    texts, runs = {}, {}
    for name, folder in [("merged", lively_lora["merged"]), ("adapter", lively_lora["adapter"]),
                         ("base", lively_model_dir)]:
        model, tokenizer = load_for_generation(folder, "fp32", "exact", **QUIET)
        assert model._agenttune_engine == "exact"
        texts[name] = [g.text for g in generate(model, tokenizer, prompts, 16, stops, 2, **QUIET)]
        runs[name] = model._agenttune_run
    assert texts["adapter"] == texts["merged"]
    assert texts["adapter"] != texts["base"]  # the adapter changed what the model writes
    assert runs["merged"]["weights"] == "merged" and runs["adapter"]["weights"] == "adapter"
    assert runs["adapter"]["adapter_merged_in_memory"] is True and runs["adapter"]["tuning"] == "lora"
    assert "weights" not in runs["base"]


def test_lora_general_loss_equal_for_adapter_and_merged(lively_lora, tmp_path):
    from agenttune.common.atomic import write_jsonl
    from agenttune.evaluate.general import general_loss

    items = tmp_path / "general.jsonl"
    write_jsonl(items, [{"id": "g1", "messages": [{"role": "user", "content": "Say hello"},
                                                  {"role": "assistant", "content": "Hello there, friend."}]}])
    a = general_loss(lively_lora["adapter"], items, "fp32", **QUIET)
    b = general_loss(lively_lora["merged"], items, "fp32", **QUIET)
    assert a["loss"] == b["loss"] and a["run"]["weights"] == "adapter" and b["run"]["weights"] == "merged"


def test_lora_server_engine_with_the_project_server_on_an_adapter_epoch(lively_lora, tmp_path):
    """The server engine given an unmerged adapter epoch and the project's own server: the server loads base +
    adapter itself and writes what the exact engine writes from the merged folder."""
    from agenttune.evaluate.generate import generate, load_for_generation
    from agenttune.evaluate.server_engine import generate_with_server

    prompts = ["<|im_start|>user\nFind flights to Paris<|im_end|>\n<|im_start|>assistant\n", "Thought:"]
    stops = [("<|im_end|>",)] * len(prompts)
    model, tokenizer = load_for_generation(lively_lora["merged"], "fp32", "exact", **QUIET)
    expected = [g.text for g in generate(model, tokenizer, prompts, 16, stops, 2, **QUIET)]
    server = {"command": "{python} -m agenttune.evaluate.serve {model} --port {port}", "ready_timeout_s": 120,
              "request_timeout_s": 120, "concurrency": 2}
    outs, info = generate_with_server(lively_lora["adapter"], prompts, stops, 16, server, "fp32", SEED,
                                      tmp_path / "server.log", **QUIET)
    assert [g.text for g in outs] == expected
    assert info["weights"] == "adapter" and info["served_model"] == "epoch-1-unmerged"


def test_lora_vllm_serves_an_unmerged_adapter_beside_its_base(lively_lora, lively_model_dir):
    from agenttune.evaluate.server_engine import is_vllm, vllm_lora_arguments

    assert is_vllm("vllm serve {model} --port {port}") and is_vllm("{python} -m vllm.entrypoints.openai.api_server")
    assert not is_vllm("{python} -m agenttune.evaluate.serve {model} --port {port}")
    source = resolve_model(lively_lora["adapter"])
    args = vllm_lora_arguments(source, "epoch-1")
    assert args == ["--enable-lora", "--lora-modules", f"epoch-1={lively_lora['adapter'].resolve()}",
                    "--max-lora-rank", "8"]
    assert source.weights_dir == Path(lively_model_dir).resolve()


# --------------------------------------------------------------------------- bad input, before training

def test_lora_target_module_that_does_not_exist_is_named(tmp_path, tiny_model_dir, shards):
    cfg = dict(LORA, lora={"target_modules": ["q_proj", "qkv_proj"]})
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules: 'qkv_proj' is not a linear module of "
                                         r"LlamaForCausalLM; its linear modules are: q_proj, k_proj, v_proj, o_proj, "
                                         r"gate_proj, up_proj, down_proj, lm_head"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, cfg, SEED, **QUIET)
    assert not (tmp_path / "epoch-1").exists()


def test_lora_modules_to_save_that_does_not_exist_is_named(tmp_path, tiny_model_dir, shards):
    cfg = dict(LORA, lora={"modules_to_save": ["score"]})
    with pytest.raises(ValueError, match=r"train\.lora\.modules_to_save: 'score' is not a module"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, cfg, SEED, **QUIET)


def test_lora_explicit_targets_train_only_those(tmp_path, tiny_model_dir, shards):
    cfg = dict(LORA, epochs=1, lora={"rank": 4, "target_modules": ["q_proj", "v_proj"], "merge": False})
    metrics = train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, cfg, SEED, **QUIET)
    assert metrics["lora"]["target_modules"] == ["q_proj", "v_proj"] and metrics["lora"]["merged"] is False
    assert metrics["trainable_parameters"] == 2 * 4 * (128 + 96)
    assert not (tmp_path / "epoch-1" / "merged").exists()
    assert resolve_model(tmp_path / "epoch-1").kind == "adapter"


def test_lora_modules_to_save_trains_exactly_the_named_modules(tmp_path, tiny_model_dir, shards):
    """PEFT matches modules_to_save as name suffixes (a bare `norm` is also every `input_layernorm`); the trainer gives
    it full names, so `norm` trains the final norm alone, as the cost model counts it. Base + adapter reloads equal to
    the merged folder."""
    cfg = dict(LORA, epochs=1, learning_rate=3e-3, lora={"rank": 4, "target_modules": ["q_proj"],
                                                         "modules_to_save": ["norm"]})
    out = tmp_path / "epoch-1"
    metrics = train_epoch(tiny_model_dir, shards, None, out, 1, cfg, SEED, **QUIET)
    assert metrics["trainable_parameters"] == 2 * 4 * (64 + 64) + 64  # q_proj's adapters in 2 layers, the final norm
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    assert not torch.equal(merged["model.norm.weight"], base["model.norm.weight"])
    assert all(torch.equal(merged[k], base[k]) for k in base if "layernorm" in k)
    shutil.copytree(out, tmp_path / "unmerged")
    shutil.rmtree(tmp_path / "unmerged" / "merged")
    in_memory, source = load_model(tmp_path / "unmerged", **QUIET)
    assert source.kind == "adapter"
    assert torch.equal(in_memory.state_dict()["model.norm.weight"], merged["model.norm.weight"])


def test_lora_qlora_on_this_cpu_install_is_refused_naming_the_key(tmp_path, tiny_model_dir, shards):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: qlora may run here (tests/gpu/test_gpu_train.py covers it)")
    cfg = dict(LORA, tuning="qlora")
    with pytest.raises(ValueError, match=r"train\.tuning: qlora .*GPU envs only.*no CUDA device"):
        train_epoch(tiny_model_dir, shards, None, tmp_path / "epoch-1", 1, cfg, SEED, **QUIET)
    assert not (tmp_path / "epoch-1").exists() and not (tmp_path / "epoch-1.partial").exists()


def test_lora_epoch_resumed_under_another_tuning_is_refused(tmp_path, tiny_model_dir, shards, lora_chain):
    with pytest.raises(ValueError, match=r"train\.tuning: full, but .*epoch-1 holds an adapter \(lora/qlora\)"):
        train_epoch(tiny_model_dir, shards, lora_chain["e1"], tmp_path / "epoch-2", 2, CFG, SEED, **QUIET)
    full = tmp_path / "full" / "epoch-1"
    train_epoch(tiny_model_dir, shards, None, full, 1, CFG, SEED, **QUIET)
    with pytest.raises(ValueError, match=r"train\.tuning: lora, but .*epoch-1 holds full model weights"):
        train_epoch(tiny_model_dir, shards, full, tmp_path / "epoch-2", 2, LORA, SEED, **QUIET)


@pytest.mark.parametrize("key, value, was, now", [
    ("rank", 8, "4", "8"), ("alpha", 16, "8.0", "16.0"), ("dropout", 0.1, "0.05", "0.1"),
    ("modules_to_save", ["lm_head"], "[]", "['lm_head']"),
    ("target_modules", ["q_proj", "v_proj"], "adapters on ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', "
                                             "'up_proj', 'v_proj']", "on ['q_proj', 'v_proj']"),
])
def test_lora_epoch_resumed_with_other_lora_settings_is_refused(tmp_path, tiny_model_dir, shards, lora_chain, key,
                                                                 value, was, now):
    import re

    cfg = dict(LORA, lora={**LORA["lora"], key: value})
    with pytest.raises(ValueError, match=rf"train\.lora\.{key}: .*epoch-1 was trained with {re.escape(was)}, "
                                         rf"now {re.escape(now)}: every epoch"):
        train_epoch(tiny_model_dir, shards, lora_chain["e1"], tmp_path / "epoch-2", 2, cfg, SEED, **QUIET)
    assert not (tmp_path / "epoch-2").exists()


def test_lora_resume_check_compares_qlora_quantization_and_needs_the_record(tmp_path):
    from agenttune.common.config import section_with_defaults

    folder = tmp_path / "epoch-1"
    folder.mkdir()
    (folder / lora.ADAPTER_WEIGHTS).write_bytes(b"")
    cfg = section_with_defaults({"tuning": "qlora", "lora": {"rank": 4, "target_modules": ["q_proj"]}}, "train")
    lora.write_record(folder, lora.record(cfg, ["q_proj"], tmp_path, 100, False, "why", folder))
    assert (folder / lora.RECORD_NAME).read_text().endswith("}\n")
    lora.check_resume(folder, cfg)
    lora.check_resume(folder, {**cfg, "lora": {**cfg["lora"], "merge": True}})  # merge is no training setting
    lora.check_resume(folder, {**cfg, "lora": {**cfg["lora"], "target_modules": "all-linear"}})  # checked later
    for key, value, was in (("quant_type", "fp4", "'nf4'"), ("double_quant", False, "True")):
        with pytest.raises(ValueError, match=rf"train\.lora\.{key}: .* was trained with {was}, now {value!r}"):
            lora.check_resume(folder, {**cfg, "lora": {**cfg["lora"], key: value}})
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules: .* was trained with adapters on \['q_proj'\], "
                                         r"now on \['k_proj', 'q_proj'\]"):
        lora.check_resume_targets(folder, ["q_proj", "k_proj"])
    lora.check_resume_targets(folder, ["q_proj"])
    (folder / lora.RECORD_NAME).unlink()
    with pytest.raises(ValueError, match=r"holds an adapter without its lora\.json"):
        lora.check_resume(folder, cfg)


def test_lora_ignores_freeze_trainable_layers_and_says_so():
    said: list[str] = []
    lora.check_config({"tuning": "lora", "freeze_trainable_layers": 6}, said.append)
    assert said == ["train.freeze_trainable_layers is ignored with tuning: lora (the base is frozen, the adapters "
                    "train)"]


@pytest.mark.parametrize("tuning, merge, params, merged, words", [
    ("lora", "auto", 7_600_000_000, True, "auto merges"),
    ("lora", "auto", 20_000_000_000, True, "auto merges"),
    ("lora", "auto", 72_700_000_000, False, "145 GB"),
    ("qlora", "auto", 7_600_000_000, False, "not the 4-bit model"),
    ("qlora", True, 72_700_000_000, True, "NOT the 4-bit model"),
    ("lora", False, 135_000_000, False, "merge: false"),
    ("lora", True, 72_700_000_000, True, "merge: true"),
])
def test_lora_merge_auto_decision(tuning, merge, params, merged, words):
    decision, why = lora.merge_decision(tuning, merge, params)
    assert decision is merged and words in why


# --------------------------------------------------------------------------- the tiny pipeline with tuning: lora

@pytest.mark.slow
def test_lora_tiny_pipeline_end_to_end(tmp_path):
    """The tiny config through the real Snakefile with `train.tuning: lora` (a second config file over
    config/test/config.yaml): both epochs keep an adapter and a merged model, evaluation loads the merged one and
    says so, the report shows the tuning."""
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    run = "pytest-lora-tiny"
    out = repo / "results" / run
    shutil.rmtree(out, ignore_errors=True)
    overlay = tmp_path / "lora.yaml"
    overlay.write_text(yaml.safe_dump({"run": run, "train": {"tuning": "lora", "lora": {"rank": 4, "alpha": 8}}}))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([snakemake, "--cores", "2", "--configfile", "config/test/config.yaml", str(overlay)],
                          cwd=repo, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    try:
        for epoch in (1, 2):
            folder = out / "checkpoints" / f"epoch-{epoch}"
            assert (folder / lora.ADAPTER_WEIGHTS).is_file() and not (folder / "model.safetensors").exists()
            assert (folder / "merged" / "model.safetensors").is_file()
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["tuning"] == "lora" and metrics["lora"]["rank"] == 4 and metrics["lora"]["merged"]
            predict = json.loads((out / "eval" / f"epoch-{epoch}" / "predict.json").read_text())
            run_record = predict["outputs"]["run"]
            assert run_record["weights"] == "merged" and run_record["tuning"] == "lora", run_record
        report = (out / "report.md").read_text()
        assert "Tuning: epoch-1: lora rank 4, alpha 8" in report and "merged lora adapter" in report
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("deepspeed, storage", [(False, torch.uint8), (True, torch.bfloat16)])
def test_lora_qlora_quantization_config_follows_train_lora(deepspeed, storage):
    q = lora.quantization_config({"quant_type": "fp4", "double_quant": False}, deepspeed)
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "fp4", False)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_quant_storage == storage


@pytest.mark.parametrize("storage, per_element", [(torch.uint8, 2), (torch.bfloat16, 4)])
def test_lora_parameter_count_unpacks_4bit_storage(storage, per_element):
    """A 4-bit parameter holds 2 values per byte of its storage dtype: bf16 storage (qlora under ZeRO-3) holds 4 per
    element, not 2 (metrics.json `parameters` and the merge decision read this count)."""
    model = torch.nn.Module()
    model.packed = torch.nn.Parameter(torch.zeros(6, 1, dtype=storage), requires_grad=False)
    model.packed.quant_state = object()  # what bitsandbytes' Params4bit carries once quantized
    model.norm = torch.nn.Parameter(torch.ones(5))
    assert lora.parameter_count(model) == 6 * per_element + 5
