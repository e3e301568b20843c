"""The report's two plots: score and loss per epoch, as SVG that gives the same bytes for the same data.

Takes: the models in epoch order (`base` drawn at epoch 0, `epoch-<e>` at e); for the score plot, series of per-model
score dicts with their value and CI keys (BFCL's per-category series, when there are any, in a panel of their own); for the loss plot, each epoch's metrics.json and each model's general.json.
Gives: `plot_scores`, `plot_losses` (matplotlib, Agg backend), each written atomically.
"""

from __future__ import annotations

from agenttune.common.atomic import atomic_write


def _epoch_of(model: str) -> int:
    return 0 if model == "base" else int(model.split("-")[1])


def _save_svg(fig, path) -> None:
    """Save an SVG without a date and with fixed element ids, so identical data gives identical bytes."""
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "agenttune"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": "agenttune"}, bbox_inches="tight")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_lines(ax, epochs: list[int], series, dodge: float = 0.0, **legend) -> None:
    """Each (label, values, key[, style]) as a line with 95% CI error bars; one with a model lacking a value is left
    out. `style`: matplotlib keyword arguments (colour, line style) for the line. `dodge`: the horizontal step
    between lines, so that many lines' error bars at one epoch stay apart."""
    for k, (label, values, key, *style) in enumerate(series):
        ys = [v.get(key) for v in values]
        if any(y is None for y in ys):
            continue
        lo = [y - (v.get(key + "_ci") or [y, y])[0] for y, v in zip(ys, values)]
        hi = [(v.get(key + "_ci") or [y, y])[1] - y for y, v in zip(ys, values)]
        xs = [e + (k - (len(series) - 1) / 2) * dodge for e in epochs] if dodge else epochs
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=label, **(style[0] if style else {}))
    ax.set_xlabel("epoch (0 = base model)")
    ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **legend)


def plot_scores(models: list[str], series: list[tuple], out_path, bfcl_series: list[tuple] | None = None) -> None:
    """`series`: (label, one dict per model, key) for each line: the dict holds the value under `key` and its 95% CI
    under `key + "_ci"`. A line with a model that has no value is left out. `bfcl_series` (same shape, with a style
    dict as a fourth element): BFCL's per-category lines, drawn in a second panel beside the first when given."""
    plt = _pyplot()
    epochs = [_epoch_of(m) for m in models]
    if bfcl_series:
        fig, (ax, ax_bfcl) = plt.subplots(1, 2, figsize=(13, 4.2))
        _draw_lines(ax_bfcl, epochs, bfcl_series, dodge=0.03, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax_bfcl.set_ylabel("accuracy")
        ax_bfcl.set_ylim(-0.05, 1.05)
        ax_bfcl.set_title("BFCL v3 per category (95% bootstrap CI)")
    else:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    _draw_lines(ax, epochs, series)
    ax.set_ylabel("score / accuracy")
    ax.set_title("Tool-call score per epoch (95% bootstrap CI)")
    _save_svg(fig, out_path)
    plt.close(fig)


def plot_losses(models: list[str], metrics: dict, general: dict, out_path) -> None:
    """Training loss (each epoch's mean) and held-out general-chat loss with its CI, per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    trained = [m for m in models if m in metrics and metrics[m].get("mean_loss") is not None]
    if trained:
        ax.plot([_epoch_of(m) for m in trained], [metrics[m]["mean_loss"] for m in trained], marker="s",
                label="training loss (mean over the epoch)")
    have = [m for m in models if general.get(m, {}).get("loss") is not None]
    if have:
        ys = [general[m]["loss"] for m in have]
        lo = [y - general[m]["loss_ci"][0] for y, m in zip(ys, have)]
        hi = [general[m]["loss_ci"][1] - y for y, m in zip(ys, have)]
        ax.errorbar([_epoch_of(m) for m in have], ys, yerr=[lo, hi], marker="o", capsize=4,
                    label="held-out general chat loss (95% CI)")
    ax.set_xlabel("epoch (0 = base model)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_xticks([_epoch_of(m) for m in models])
    ax.set_title("Loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_svg(fig, out_path)
    plt.close(fig)
