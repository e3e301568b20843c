"""Formatting stage (rules/data.smk: format_samples): canonical traces -> samples: splits, templates, hard negatives,
general-chat mixing, decontamination.
"""
