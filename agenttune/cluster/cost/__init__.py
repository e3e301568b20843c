"""Cost and memory estimation for fine-tuning with HF Trainer + DeepSpeed ZeRO-3: full, freeze, LoRA and QLoRA
(docs/cost.md).

Takes: a model shape (a preset name or an HF `config.json`), a GPU type and count, a token count, max_len and the
training flags (gradient checkpointing, ZeRO offload).
Gives, one module per concern:
- `shapes`: `ModelShape` (parameter counts), the presets, `load_shape`;
- `devices`: `GPU`, the known accelerators, `get_gpu`;
- `adapters`: `LoraSpec` (LoRA / QLoRA: adapter parameters, modules_to_save, the 4-bit base), `lora_spec`;
- `flops`: training FLOPs, hours per epoch and GPU-hours at a stated MFU, the MFU a run implies or measured;
- `memory`: the per-GPU memory breakdown under ZeRO-3 and the CPU memory of offload;
- `fit`: `Plan`, and the preflight verdict that names the nearest configuration that fits;
- `seed`: the reproduction of the seed's cost table;
- `tables`: the rows of a verdict and their Markdown / CSV;
- `preflight`: the pipeline's preflight (the `cost_preflight` rule's script);
- `evaluation`: the sizing of the jobs that load a model to evaluate it (the `eval_preflight` rule's script);
- `__main__`: the CLI, `python -m agenttune.cluster.cost --help`.

Conventions (docs/cost.md explains each):
- FLOPs: 6·N·T for the dense part, N = every parameter except the input-embedding table (a lookup, no multiply);
  causal attention 12·L·(heads·head_dim)·k̄ per token for forward + backward, k̄ = the mean number of keys a token
  attends to, (s+1)/2 for a row of length s; gradient checkpointing adds one more forward of the decoder layers (HF
  checkpoints the layers, not the lm_head).
- "MFU" here is the fraction of the GPUs' dense bf16 peak spent on the FLOPs `flops.training_flops` counts. With
  checkpointing off that is MFU as PaLM defines it; with it on it includes the recomputed forward (PaLM calls that
  HFU). Counting the recompute keeps one utilization figure valid whether a run checkpoints or not.
- Bytes, with GiB = 2**30 for everything this package prints.
"""
