import json

from agenttune.common.runlog import stage_log
from agenttune.tokenize.encoder import ChatEncoder
from agenttune.tokenize.manifest import gather_manifest, manifest_extra

with stage_log(snakemake.log[0]) as log:
    plan = json.loads(open(snakemake.input.plan, encoding="utf-8").read())
    encoder = ChatEncoder.from_folder(snakemake.input.model)
    extra = manifest_extra(snakemake.params.tokenize, encoder, plan)
    manifest = gather_manifest(snakemake.input.stats, snakemake.output[0], extra)
    for split, s in manifest["splits"].items():
        eff = f", packing efficiency {s['packing_efficiency']:.4f}" if manifest["packing"] else ""
        log(f"{split}: {s['samples_in']} samples, {s['rows']} rows, {s['tokens']} tokens, {s['dropped']} dropped{eff}")
