"""Test probe, loaded by every Python process whose PYTHONPATH starts with this folder: when AGENTTUNE_PROBE_DIR is
set, each batch the HF Trainer hands the model is saved there (`rank<R>-<n>.pt`), as the model's forward receives it,
so that a test can compare what training really saw with what the shards hold (tests/test_training_inputs.py).
Training ranks run in processes of their own (launchers), hence a sitecustomize rather than a monkeypatch."""

import os


def install(folder: str) -> None:
    """Wrap Trainer.compute_loss so that its first call puts a forward pre-hook on the unwrapped model (under
    DeepSpeed and DDP the wrapper calls it with the batch's tensors as keyword arguments)."""
    import torch
    from transformers import Trainer

    original = Trainer.compute_loss
    rank = os.environ.get("RANK", "0")
    count = [0]

    def record(module, args, kwargs):
        batch = {k: v.detach().cpu() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        torch.save(batch, os.path.join(folder, f"rank{rank}-{count[0]:04d}.pt"))
        count[0] += 1

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not getattr(self.model, "_probe_hooked", False):
            self.model.register_forward_pre_hook(record, with_kwargs=True)
            self.model._probe_hooked = True
        return original(self, model, inputs, *args, **kwargs)

    Trainer.compute_loss = compute_loss


if os.environ.get("AGENTTUNE_PROBE_DIR"):
    install(os.environ["AGENTTUNE_PROBE_DIR"])
