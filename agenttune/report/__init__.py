"""Report stage (rules/report.smk): the report and its plots."""
