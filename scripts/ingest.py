from agenttune.traces.sources import source_roles
from agenttune.common.manifest import write_manifest
from agenttune.common.runlog import stage_log
from agenttune.traces.ingest import SourceSpec, ingest

with stage_log(snakemake.log[0]) as log:
    sources = snakemake.params.sources
    source_roles(sources)  # unique names, known roles: fail before reading anything
    specs = [SourceSpec(s["name"], s["path"], s["format"], s["limit"]) for s in sources]
    out = snakemake.output
    stats = ingest(specs, out.traces, out.quarantine, out.stats)
    for s in stats["sources"]:
        log(f"{s['name']} ({s['format']}): read {s['read']}, kept {s['kept']}, quarantined {s['quarantined']} "
            f"{s['quarantined_by_kind']}, deduplicated {s['deduplicated']}")
    inputs = {f"source:{s['name']}": s["path"] for s in sources if s["format"] != "hf_dataset"}
    write_manifest(out.manifest, "ingest", inputs, {"sources": sources})
