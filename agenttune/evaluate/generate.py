"""Generation: greedy decoding, batched over a slotted KV cache, stopping at eos or a template's stop strings.

Takes: a causal LM folder (base model or checkpoint) and chat-formatted prompt strings, each with its own stop
strings (a template module's `STOP`).
Gives: one `Generation` per prompt (text cut before the first stop string, the number of generated tokens, why it
stopped), in prompt order.

On CPU, batched outputs are identical to one-by-one outputs, bit for bit, not merely close (on a GPU, see the end
of this docstring). Plain batched `generate()` with left padding is not: on CPU fp32 the last-token logits of a
padded row differ from the same prompt run alone by ~3e-5 (enough to flip a greedy choice now and then). Two causes
were found, neither of them position ids (which transformers derives from the attention mask):

1. Attention over padded keys. `softmax(QK^T) V` reduces over the key axis; with k padding keys in front, the real
   keys fall into different SIMD/blocking groups of that reduction and the sum rounds differently (~1e-7 per
   layer, with sdpa and with eager alike; an explicit mask does not help, zeros still shift the grouping).
2. Matrix-multiply kernels that depend on the number of rows. A linear layer on 1 row (decoding one sequence) goes
   through a GEMV kernel, 2-3 rows through another small-M path, 4+ rows through the GEMM kernel; each sums the
   hidden dimension in another order (~3e-5 on the logits). Prefill is unaffected (hundreds of rows either way);
   decoding is: 1 row alone versus B rows batched.

The engine here removes both, so every row's arithmetic is the same whatever else is in the batch:
- attention runs row by row over that row's real keys only (`rowwise_attention`, registered with transformers'
  AttentionInterface), so the reduction length and grouping equal those of the prompt run alone;
- while decoding, linear layers compute (W @ x^T)^T (`rows_matmul`, faster than `F.linear` on few rows) on a row
  count padded with zero rows to a multiple of the block from which this machine's matmul gives row-identical
  results (`invariant_row_block`, probed once per weight shape; 16 on the AVX2 CPU seen here);
- each prompt is prefilled on its own (no padding in the compute-bound prefill, so no wasted work; plain
  `F.linear` there), then its keys/values are copied into a free slot of a preallocated cache (`_SlotCache`) where
  they stay until the row finishes: a decode step writes each row's new key in place, with no copy of the cache;
  finished rows free their slot and waiting prompts take it (continuous batching), so the batch stays full.

The guarantee holds on CPU only: it is verified there (tests/test_generate.py), and on CUDA other reductions across
a row (RMSNorm's, for one) change their split with the number of rows, which the two fixes above do not cover. So
on a GPU (`choose_engine`), for models whose cache is not a plain full-attention `DynamicCache` (sliding-window
layers, linear attention), and when some linear layer's shape has no row block on this machine's BLAS, generation
uses transformers' `generate()` instead, batched with left padding: equal to one-by-one outputs only up to float
rounding. Each of these says why in one log line.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agenttune.common.config import section_with_defaults

ROWWISE_ATTENTION = "agenttune_rowwise"
# Largest row count probed when looking for matmul kernels that give row-identical results.
_MAX_PROBE_ROWS = 64


@dataclass(frozen=True)
class Generation:
    text: str  # decoded new text, cut before the first stop string; special tokens dropped
    tokens: int  # tokens generated (the eos token counts; tokens after a stop string do not exist)
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens reached)
    stop: str | None = None  # the stop string matched (finish_reason "stop"; the first of the earliest), else None


# --- batch-invariant attention ----------------------------------------------------------------------------------

def _starts_from_mask(attention_mask, batch: int, key_len: int) -> list[int]:
    """First real key of each row, from a 4D mask (bool: True = may attend; float: 0 = may attend) or None."""
    if attention_mask is None:
        return [0] * batch
    last = attention_mask[:, 0, -1, :]
    allowed = last if last.dtype == torch.bool else last == 0
    starts = []
    for b in range(batch):
        idx = torch.nonzero(allowed[b]).flatten()
        start = int(idx[0]) if len(idx) else key_len
        if not bool(allowed[b, start:].all()):
            raise ValueError("rowwise attention needs left padding: a row's real keys must be contiguous at the end")
        starts.append(start)
    return starts


def rowwise_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      pad_starts=None, kv_rows=None, **kwargs):
    """Attention computed one batch row at a time over that row's real (non-padding) keys.

    query (B, H, Lq, D); key/value (B, Hkv, Lk, D); queries are aligned to the end of the keys (prefill: Lq = Lk;
    decode: Lq = 1). `pad_starts[b]` is the index of row b's first real key (from the generation loop, or derived
    from a left-padding mask). Query rows that are padding get zeros. Returns (B, Lq, H, D), None like transformers'
    sdpa function.

    With `kv_rows` (decoding from a `_SlotCache`, Lq = 1) key/value are the cache's slot buffers instead and row b's
    keys are `key[slot, :, :length]` for `(slot, length) = kv_rows[b]`.
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    n_rep = heads // kv_heads
    if kv_rows is not None:
        # One query per row sees all of its row's keys: attend per key head with the group's queries side by side.
        rows = []
        for b, (slot, length) in enumerate(kv_rows):
            q = query[b:b + 1].reshape(1, kv_heads, n_rep * q_len, dim)
            o = F.scaled_dot_product_attention(q, key[slot:slot + 1, :, :length], value[slot:slot + 1, :, :length],
                                               scale=scaling)
            rows.append(o.reshape(1, heads, q_len, -1))
        return torch.cat(rows).transpose(1, 2).contiguous(), None
    starts = [int(s) for s in pad_starts] if pad_starts is not None else _starts_from_mask(attention_mask, batch, k_len)
    out = query.new_zeros(batch, heads, q_len, value.shape[-1])
    for b in range(batch):
        s = starts[b]
        n_keys = k_len - s
        n_q = min(q_len, n_keys)
        if n_q <= 0:
            continue
        q = query[b:b + 1, :, q_len - n_q:]
        k, v = key[b:b + 1, :, s:], value[b:b + 1, :, s:]
        if n_q == 1:
            # One query sees every key: attend per key head with the group's queries side by side (no K/V copies).
            o = F.scaled_dot_product_attention(q.reshape(1, kv_heads, n_rep, dim), k, v, scale=scaling)
            o = o.reshape(1, heads, 1, -1)
        elif n_q == n_keys:
            o = F.scaled_dot_product_attention(q, k, v, scale=scaling, is_causal=True, enable_gqa=n_rep > 1)
        else:  # queries after a cached prefix: causal, aligned bottom-right
            mask = torch.ones(n_q, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - n_q)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=n_rep > 1)
        out[b:b + 1, :, q_len - n_q:] = o
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def register_rowwise_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention)
    AttentionMaskInterface.register(ROWWISE_ATTENTION, sdpa_mask)
    return ROWWISE_ATTENTION


# --- batch-invariant linear layers ------------------------------------------------------------------------------

# Row blocks probed: a row count that is a multiple of the block must give every row the same bits.
_PROBE_BLOCKS = (1, 2, 4, 8, 16, 32, 64)


def rows_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (rows, in) times weight (out, in) transposed, computed as (weight @ x^T)^T: with few rows (decoding) BLAS
    runs this as a GEMM whose long side is the weight's output dimension, which is faster on CPU than `F.linear`'s
    few-row GEMM (BENCHMARKS.md: 58 vs 78 ms for SmolLM2's linear layers at 16 rows)."""
    return torch.mm(weight, x.t()).t().contiguous()


@functools.cache
def invariant_row_block(in_features: int, out_features: int, dtype: torch.dtype = torch.float32,
                        device: str = "cpu", threads: int | None = None) -> int | None:
    """The smallest block b in _PROBE_BLOCKS such that `rows_matmul` gives each row bit-identical results whenever
    the row count is a multiple of b (every multiple up to 64 rows, with rows at several offsets in the block;
    larger batches are assumed to behave like 64 rows). None if no block works: then batching cannot be made exact
    on this machine. Random data, once per shape and thread count (kernels are chosen per thread count too;
    `make_batch_invariant` passes the current one)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(out_features, in_features, generator=gen).to(dtype=dtype, device=device)
    x = torch.randn(2 * _PROBE_BLOCKS[-1], in_features, generator=gen).to(dtype=dtype, device=device)
    ref = rows_matmul(x, w)
    for block in _PROBE_BLOCKS:
        counts = range(block, _PROBE_BLOCKS[-1] + 1, block)
        if all(torch.equal(rows_matmul(x[o:o + n], w), ref[o:o + n]) for n in counts for o in (0, 3, 17)):
            return block
    return None


class _Phase:
    """Whether the model is prefilling one prompt alone (then linear layers use plain `F.linear`, 7% faster on
    hundreds of rows; a prompt is always prefilled alone, so no row count varies there) or decoding a batch."""

    prefill = False


def _invariant_linear(block: int, phase: _Phase, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward; while decoding, rows padded (zeros) to a multiple of `block`, through `rows_matmul`."""
    if phase.prefill:
        return F.linear(x, module.weight, module.bias)
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    padded = -(-rows // block) * block
    if padded != rows:
        flat = torch.cat([flat, flat.new_zeros(padded - rows, x.shape[-1])])
    out = rows_matmul(flat, module.weight)[:rows]
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*x.shape[:-1], module.out_features)


def make_batch_invariant(model, log=print) -> str | None:
    """Route every nn.Linear through `_invariant_linear` with its shape's row block, so that each row's result
    does not depend on how many rows the batch has. Returns None when done; when some shape has no row block,
    returns why and leaves every layer as it was (all shapes are probed before any layer is touched), so that the
    caller can fall back to another engine."""
    device = str(next(model.parameters()).device)
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    blocks = []
    for name, module in linears:
        block = invariant_row_block(module.in_features, module.out_features, module.weight.dtype, device,
                                    torch.get_num_threads())
        if block is None:
            return (f"no row block up to {_PROBE_BLOCKS[-1]} gives row-identical matmuls for {name} "
                    f"({module.in_features}x{module.out_features}, {module.weight.dtype}) on this machine")
        blocks.append(block)
    model._agenttune_phase = phase = _Phase()
    for (_, module), block in zip(linears, blocks):
        module.forward = functools.partial(_invariant_linear, block, phase, module)
    log(f"batch-invariant generation: linear layers padded to multiples of {max(blocks, default=1)} rows, "
        "attention row by row")
    return None


# --- loading ----------------------------------------------------------------------------------------------------

def choose_engine(requested: str, device: str, exact_on_gpu: bool = False) -> tuple[str, str | None]:
    """The engine to generate with on `device` and, when it is not the requested one, why (a line to log).
    `exact_on_gpu` keeps `exact` on a GPU: for the GPU suite, which measures whether batch invariance holds there."""
    if requested == "exact" and device != "cpu" and not exact_on_gpu:
        return "hf", (f"the exact engine's batch invariance is verified on CPU only (on {device}, reductions such as "
                      "RMSNorm's change their split with the number of rows)")
    return requested, None


def load_for_generation(model_dir, precision: str | None = None, engine: str | None = None, log=print,
                        attn_implementation: str | None = None, exact_on_gpu: bool = False):
    """Model and tokenizer for greedy generation, placed by agenttune.evaluate.placement (bf16 only on a GPU; the
    layers spread over all of the job's GPUs). `precision`, `engine` and `attn_implementation` default to the
    schema's `evaluate.*`. The engine actually used is `model._agenttune_engine`: `hf` instead of `exact` where batch
    invariance does not hold (see the module docstring), with the reason logged; `model._agenttune_run` records
    engine, dtype, attention implementation and devices (placement.run_info). The `server` engine loads no model
    here (agenttune.evaluate.server_engine)."""
    from transformers import AutoTokenizer

    from agenttune.evaluate.placement import load_placed_model, run_info

    defaults = section_with_defaults({}, "evaluate")
    precision, engine = precision or defaults["precision"], engine or defaults["engine"]
    attn_implementation = attn_implementation or defaults["attn_implementation"]
    if engine not in ("exact", "hf"):
        raise ValueError(f"evaluate.engine: {engine!r} does not load a model in this job (exact or hf do)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine, fallback = choose_engine(engine, device, exact_on_gpu)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if engine == "exact":
        if torch.cuda.device_count() > 1:
            raise ValueError("evaluate.engine: exact runs on one device; this job sees "
                             f"{torch.cuda.device_count()} GPUs (use hf or server)")
        # The exact engine brings its own attention (row by row); the setting applies to hf and general-loss.
        attn_implementation = register_rowwise_attention()
    model = load_placed_model(model_dir, precision, attn_implementation, log)
    if engine == "exact":
        if _plain_dynamic_cache(model):
            fallback = make_batch_invariant(model, log)
        else:
            fallback = "this model's KV cache is not a plain full-attention cache"
        if fallback:
            model.set_attn_implementation("sdpa")
            engine = "hf"
    if fallback:
        log(f"{fallback}: generating with transformers' generate() (batched with left padding: outputs equal "
            "one-by-one outputs only up to float rounding)")
    model._agenttune_engine = engine
    model._agenttune_run = run_info(model, engine)
    return model, tokenizer


def _plain_dynamic_cache(model) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an exotic config: not for this engine
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


# --- stopping ---------------------------------------------------------------------------------------------------

def truncate_at_stop(text: str, stops) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; also say whether one was found."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


class _Row:
    """One prompt being decoded."""

    __slots__ = ("index", "new", "stops", "result")

    def __init__(self, index: int, stops):
        self.index, self.new, self.stops, self.result = index, [], tuple(stops), None

    def push(self, token: int, tokenizer, eos: set[int], max_new_tokens: int) -> bool:
        """Record a generated token; return True when the row is finished."""
        self.new.append(token)
        if token in eos:
            self._finish(tokenizer, "eos", self.new[:-1])
            return True
        raw = tokenizer.decode(self.new, skip_special_tokens=True)
        text, stopped = truncate_at_stop(raw, self.stops)
        if stopped:
            self.result = Generation(text, len(self.new), "stop", self._stop_at(raw, len(text)))
            return True
        if len(self.new) >= max_new_tokens:
            self._finish(tokenizer, "length", self.new)
            return True
        return False

    def _finish(self, tokenizer, reason: str, tokens: list[int]) -> None:
        raw = tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = truncate_at_stop(raw, self.stops)
        self.result = Generation(text, len(self.new), reason,
                                 self._stop_at(raw, len(text)) if stopped and reason == "stop" else None)

    def _stop_at(self, raw: str, cut: int) -> str | None:
        """The stop string where truncate_at_stop cut `raw`: the first in `stops` order that starts at `cut`."""
        return next((s for s in self.stops if raw.startswith(s, cut)), None)


# --- the exact engine -------------------------------------------------------------------------------------------

@functools.cache
def _slot_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _SlotLayer(DynamicLayer):
        """One layer of a `_SlotCache`: keys/values buffers of shape (slots, kv heads, capacity, head dim)."""

        def __init__(self, owner: "_SlotCache"):
            super().__init__()
            self.owner = owner

        def allocate(self, like: torch.Tensor) -> None:
            shape = (self.owner.slots, like.shape[1], self.owner.capacity, like.shape[3])
            self.keys = like.new_zeros(shape)
            self.values = like.new_zeros(shape)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            """Write this step's key/value of every decoded row at its slot's next position (in place)."""
            slot_idx, pos_idx = self.owner.step_index
            self.keys[slot_idx, :, pos_idx] = key_states[:, :, -1]
            self.values[slot_idx, :, pos_idx] = value_states[:, :, -1]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.owner.longest

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.owner.longest + query_length, 0

    return _SlotLayer


class _SlotCache:
    """The KV cache of the rows being decoded: a fixed slot per row, holding that row's keys at [0, length) of
    preallocated buffers. Rows never move: a decode step writes each row's new key in place (no copy of the cache,
    which `torch.cat` in a `DynamicCache` makes every step), a finished row frees its slot for the next prompt, and
    no row is padded (attention reads `key[slot, :, :length]`). Capacity is the longest prompt plus max_new_tokens
    over all prompts, so the buffers' shape, hence every row's arithmetic, does not depend on the batch."""

    def __init__(self, model, slots: int, capacity: int):
        from transformers import DynamicCache

        self.slots, self.capacity = slots, capacity
        self.cache = DynamicCache(config=model.config)
        layer_class = _slot_layer_class()
        self.cache.layers = [layer_class(self) for _ in self.cache.layers]
        self.lengths = [0] * slots
        self.free = list(range(slots))  # a heap: the lowest free slot is taken first
        self.step_index = None
        self.longest = 0

    def put(self, row_cache) -> int:
        """Copy a prefilled row (a batch-of-one DynamicCache) into a free slot; return the slot."""
        slot = heapq.heappop(self.free)
        length = row_cache.get_seq_length()
        for layer, src in zip(self.cache.layers, row_cache.layers):
            if not layer.is_initialized:
                layer.allocate(src.keys)
            layer.keys[slot, :, :length] = src.keys[0]
            layer.values[slot, :, :length] = src.values[0]
        self.lengths[slot] = length
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self.free, slot)

    def begin_step(self, slots: list[int]) -> list[tuple[int, int]]:
        """Positions where this step's keys go; returns each row's (slot, key count) for the attention."""
        device = self.cache.layers[0].keys.device
        positions = [self.lengths[s] for s in slots]
        if max(positions) >= self.capacity:
            raise RuntimeError(f"KV cache slot full ({self.capacity} positions)")
        self.step_index = (torch.tensor(slots, device=device), torch.tensor(positions, device=device))
        self.longest = max(positions)
        for s in slots:
            self.lengths[s] += 1
        return [(s, self.lengths[s]) for s in slots]


@torch.no_grad()
def _generate_exact(model, tokenizer, prompt_ids: list[list[int]], stops: list[tuple], max_new_tokens: int,
                    batch_size: int, progress, stats: dict) -> list[Generation]:
    from transformers import DynamicCache

    device = model.device
    eos = _eos_ids(model, tokenizer)
    results: list[Generation | None] = [None] * len(prompt_ids)
    waiting = deque(range(len(prompt_ids)))
    active: list[tuple[_Row, int]] = []  # (row, slot)
    phase = getattr(model, "_agenttune_phase", _Phase())
    capacity = max(len(p) for p in prompt_ids) + max_new_tokens
    batch = _SlotCache(model, min(batch_size, len(prompt_ids)), capacity)
    while waiting or active:
        while waiting and len(active) < batch_size:
            i = waiting.popleft()
            row = _Row(i, stops[i])
            cache = DynamicCache(config=model.config)
            ids = torch.tensor([prompt_ids[i]], dtype=torch.long, device=device)
            start = time.perf_counter()
            phase.prefill = True
            try:
                out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, pad_starts=[0])
            finally:
                phase.prefill = False
            stats["prefill_s"] += time.perf_counter() - start
            stats["prefill_tokens"] += len(prompt_ids[i])
            if row.push(int(out.logits[0, -1].argmax()), tokenizer, eos, max_new_tokens):
                results[i] = row.result
                progress()
                continue
            active.append((row, batch.put(cache)))
        if not active:
            continue
        start = time.perf_counter()
        kv_rows = batch.begin_step([slot for _, slot in active])
        input_ids = torch.tensor([[r.new[-1]] for r, _ in active], dtype=torch.long, device=device)
        # The new token's position is the number of keys before it in its slot.
        positions = torch.tensor([[n - 1] for _, n in kv_rows], dtype=torch.long, device=device)
        out = model(input_ids=input_ids, position_ids=positions, past_key_values=batch.cache, use_cache=True,
                    logits_to_keep=1, kv_rows=kv_rows)
        tokens = out.logits[:, -1].argmax(-1).tolist()
        stats["decode_s"] += time.perf_counter() - start
        stats["decode_steps"] += 1
        stats["decode_tokens"] += len(active)
        still = []
        for (row, slot), token in zip(active, tokens):
            if row.push(token, tokenizer, eos, max_new_tokens):
                results[row.index] = row.result
                batch.release(slot)
                progress()
            else:
                still.append((row, slot))
        active = still
    return results


# --- transformers' generate() (fallback engine and baseline) ----------------------------------------------------

@torch.no_grad()
def _generate_hf(model, tokenizer, prompt_ids: list[list[int]], stops: list[tuple], max_new_tokens: int,
                 batch_size: int, progress, stats: dict) -> list[Generation]:
    """Batches of prompts with equal stop strings, left-padded, through `model.generate`."""
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    results: list[Generation | None] = [None] * len(prompt_ids)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(stops):
        groups.setdefault(tuple(s), []).append(i)
    for group_stops, idx in sorted(groups.items()):
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            width = max(len(prompt_ids[i]) for i in chunk)
            ids = torch.tensor([[pad] * (width - len(prompt_ids[i])) + prompt_ids[i] for i in chunk])
            mask = torch.tensor([[0] * (width - len(prompt_ids[i])) + [1] * len(prompt_ids[i]) for i in chunk])
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=sorted(eos), stop_strings=list(group_stops) or None,
                                 tokenizer=tokenizer)
            for i, seq in zip(chunk, out[:, width:].tolist()):
                row = _Row(i, group_stops)
                for token in seq:
                    if row.push(token, tokenizer, eos, max_new_tokens):
                        break
                if row.result is None:  # generate() stopped on a stop string that decodes differently alone
                    row._finish(tokenizer, "stop", row.new)
                results[i] = row.result
                progress()
    return results


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, stops, batch_size: int,
             log=print, engine: str | None = None, stats: dict | None = None) -> list[Generation]:
    """Greedy generation for every prompt. `stops`: one tuple of stop strings for all prompts, or one per prompt.

    The prompts are complete strings (chat template applied); no special tokens are added. `stats`, if given, gets
    the time spent in prefill and in decode steps (exact engine; for benchmarks).
    """
    if stops and isinstance(stops[0], str):
        stops = [tuple(stops)] * len(prompts)
    elif not stops:
        stops = [()] * len(prompts)
    if len(stops) != len(prompts):
        raise ValueError(f"{len(stops)} stop tuples for {len(prompts)} prompts")
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    done = [0]
    step = max(1, len(prompts) // 8)

    def progress():
        done[0] += 1
        if done[0] % step == 0 or done[0] == len(prompts):
            log(f"generated {done[0]}/{len(prompts)}")

    engine = engine or getattr(model, "_agenttune_engine", "hf")
    run = _generate_exact if engine == "exact" else _generate_hf
    stats = stats if stats is not None else {}
    for key in ("prefill_s", "decode_s"):
        stats.setdefault(key, 0.0)
    for key in ("prefill_tokens", "decode_steps", "decode_tokens"):
        stats.setdefault(key, 0)
    return run(model, tokenizer, prompt_ids, [tuple(s) for s in stops], max_new_tokens, batch_size, progress, stats)


def generate_ids(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, stops: list[tuple],
                 batch_size: int, engine: str | None = None) -> list[Generation]:
    """`generate` for prompts that are already token ids (for a caller that tokenizes itself, such as the server's
    /v1/completions with `add_special_tokens`): the same engines, hence the same `Generation` as `generate` gives for
    a prompt string that tokenizes to these ids. `stops`: one tuple of stop strings per prompt. No log, no stats."""
    if len(stops) != len(prompt_ids):
        raise ValueError(f"{len(stops)} stop tuples for {len(prompt_ids)} prompts")
    engine = engine or getattr(model, "_agenttune_engine", "hf")
    run = _generate_exact if engine == "exact" else _generate_hf
    stats = dict.fromkeys(("prefill_s", "decode_s", "prefill_tokens", "decode_steps", "decode_tokens"), 0)
    return run(model, tokenizer, [list(p) for p in prompt_ids], [tuple(s) for s in stops], max_new_tokens, batch_size,
               lambda: None, stats)
