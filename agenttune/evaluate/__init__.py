"""Evaluate stage (rules/evaluate.smk): benchmark items, generation, predictions, scoring, general-chat loss, human
ratings, serving.
"""
