"""Train stage (rules/train.smk): base-model preparation, one epoch per job (HF Trainer, DeepSpeed ZeRO-3), launchers.
"""
