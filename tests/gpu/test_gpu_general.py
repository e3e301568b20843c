"""General-chat loss (agenttune.evaluate.general.general_loss) in bf16 and fp32 on the GPU: the same number within
a stated tolerance, and the result says how it ran."""

from __future__ import annotations

import json
import math

from agenttune.evaluate.general import general_loss

from . import suite

pytestmark = suite.MARKS

# Relative. bf16 weights and activations carry 8 bits of mantissa (relative rounding 2^-9 ~ 0.2% per value); over
# 30 layers the errors add up like a random walk (~sqrt(30) x 0.2% ~ 1% on a hidden state), and the loss, a mean of
# log-probabilities over a few hundred answer tokens, moves by much less since the errors are not all one way.
# 2% bounds that with room, and is still far below what a wrong model, dtype or masking does to a loss (tens of %).
# The model has first learnt the items' answers (suite.memorize): with random weights the loss sits at ~ln(49152)
# whatever the rounding, and the comparison would say nothing.
RELATIVE_TOLERANCE = 0.02


def test_general_loss_bf16_within_tolerance_of_fp32(tmp_path, base_model_dir, gpu_tokenizer, measurements):
    from agenttune.tokenize.encoder import ChatEncoder

    items = suite.general_chat_items()
    path = tmp_path / "general_items.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    encoded = ChatEncoder.from_hf(gpu_tokenizer).encode(items, 4096)  # assistant turns trained, as in a real sample
    model_dir = tmp_path / "learnt-items"
    curve = [r["loss"] for r in suite.memorize(base_model_dir, encoded, model_dir, suite.Log("memorize items: "))
             ["loss_curve"]]
    results = {}
    for precision in ("fp32", "bf16"):
        results[precision] = general_loss(model_dir, path, precision, suite.Log(f"general {precision}: "))
        suite.free_memory()
    fp32, bf16 = results["fp32"], results["bf16"]
    rel = abs(bf16["loss"] - fp32["loss"]) / fp32["loss"]

    def how(result):  # the lead's change puts dtype, attention and devices under "run" (or at the top level)
        source = result.get("run") or result
        return {k: source.get(k) for k in ("dtype", "attn_implementation", "devices", "gpu")}

    measurements.record("general_loss", {
        "fp32": fp32["loss"], "bf16": bf16["loss"], "relative_difference": rel, "tolerance": RELATIVE_TOLERANCE,
        "items": fp32["items"], "tokens": fp32["tokens"], "fp32_run": how(fp32), "bf16_run": how(bf16),
        "model_training_loss_first_last": [curve[0], curve[-1]]})
    print(f"general loss fp32 {fp32['loss']:.5f}, bf16 {bf16['loss']:.5f} (rel {rel:.2e}); runs {how(fp32)} "
          f"{how(bf16)}")
    assert fp32["items"] == bf16["items"] == len(items) and fp32["tokens"] == bf16["tokens"] > 0
    assert math.isfinite(fp32["loss"]) and math.isfinite(bf16["loss"])
    assert rel <= RELATIVE_TOLERANCE, (fp32["loss"], bf16["loss"])
    assert curve[-1] < curve[0] / 2 and fp32["loss"] < curve[0] / 2, "the model did not learn the items"
    run = how(bf16)
    if run["dtype"] is not None:  # recorded by the evaluate stage (placement.run_info)
        assert run["dtype"] == suite.expected_precision("bf16") and how(fp32)["dtype"] == "fp32", run
        assert any(d.startswith(suite.DEVICE) for d in run["devices"]), run
