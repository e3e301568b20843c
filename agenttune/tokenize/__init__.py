"""Tokenize stage (rules/tokenize.smk): samples -> Parquet token shards with exact loss masks, packing and a manifest.
"""
